// chameleon-serve playground: a chat over this server's /v1/chat/completions, streamed, and an edit mode
// over /v1/images/edits: any image of the conversation opens in a brush editor whose painted area is the mask.
// Plain script, no build step, no other host. The API key lives in this page's memory only.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  model: null,
  key: "",
  history: [],      // messages sent back to the server: user turns and finished replies
  attachments: [],  // {name, url} data URLs waiting for the next message
  abort: null,      // AbortController of the request in flight
  images: 0,        // numbering for download names
};

class ApiError extends Error {
  constructor(status, error) {
    super(error.message || "request failed");
    this.status = status;
    this.type = error.type;
    this.code = error.code;
    this.param = error.param;
  }

  describe() {
    const head = [this.status && `HTTP ${this.status}`, this.type].filter(Boolean).join(" · ");
    const param = this.param ? ` (parameter: ${this.param})` : "";
    return `${head ? head + ": " : ""}${this.message}${param}`;
  }
}

function element(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else el.setAttribute(name, value);
  }
  el.append(...children);
  return el;
}

function scrollDown() {
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
}

// ---- settings -> request fields ----

const NUMBER_FIELDS = ["temperature", "top_p", "top_k", "max_tokens", "seed",
                       "image_temperature", "image_top_p", "image_top_k"];

function requestBody() {
  const form = $("settings");
  const body = {
    model: state.model,
    messages: state.history,
    modalities: $("modalities").value.split(","),
    stream: true,
    stream_options: {include_usage: true},
  };
  for (const name of NUMBER_FIELDS) {
    const raw = form.elements[name].value.trim();
    if (raw !== "") body[name] = Number(raw);  // the server validates and says what is wrong
  }
  const previews = $("partial_images").value.trim();
  if (body.modalities.includes("image") && previews !== "") body.stream_options.partial_images = Number(previews);
  const size = $("image_size").value;
  if (body.modalities.includes("image") && size !== "auto") body.image_size = size;
  return body;
}

// ---- HTTP ----

function headers(json = true) {
  const h = json ? {"Content-Type": "application/json"} : {};  // a FormData body sets its own
  if (state.key) h.Authorization = `Bearer ${state.key}`;
  return h;
}

async function errorOf(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && body.error) return new ApiError(response.status, body.error);
  } catch (_) { /* not JSON: use the text */ }
  return new ApiError(response.status, {message: text || response.statusText || "request failed"});
}

// Server-sent events of one streamed reply, parsed; an in-band error event becomes an ApiError.
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const message = JSON.parse(data);
        if (message.error) throw new ApiError(null, message.error);
        yield message;
      }
    }
  }
}

// ---- rendering ----

function renderUser(content) {
  const parts = element("div", {class: "parts"});
  for (const part of typeof content === "string" ? [{type: "text", text: content}] : content) {
    if (part.type === "text") parts.append(element("p", {class: "text", text: part.text}));
    else parts.append(element("span", {class: "thumb-box"},
                              element("img", {class: "thumb", src: part.image_url.url, alt: "attached image"}),
                              ...editButtons(part.image_url.url)));
  }
  const item = element("li", {class: "msg user"}, element("div", {class: "who", text: "You"}), parts);
  $("messages").append(item);
  return item;
}

// One assistant reply as it streams: text runs and images in arrival order; previews sharpen in place.
class Reply {
  constructor() {
    this.parts = element("div", {class: "parts"});
    this.meta = element("div", {class: "meta"});
    this.item = element("li", {class: "msg assistant busy"},
                        element("div", {class: "who", text: "Model"}), this.parts, this.meta);
    this.content = [];    // what goes back into the history: text and final images
    this.pending = null;  // the figure of an image whose previews arrived, final not yet
    $("messages").append(this.item);
  }

  text(delta) {
    const last = this.parts.lastElementChild;
    if (last && last.classList.contains("text")) last.textContent += delta;
    else this.parts.append(element("p", {class: "text", text: delta}));
    const prev = this.content[this.content.length - 1];
    if (prev && prev.type === "text") prev.text += delta;
    else this.content.push({type: "text", text: delta});
  }

  image(part) {
    let figure = this.pending;
    if (!figure) {
      state.images += 1;
      const img = element("img", {alt: `generated image ${state.images}`});
      img.addEventListener("load", () => img.classList.toggle("small", img.naturalWidth < 256));
      figure = element("figure", {class: "image"}, img, element("figcaption"));
      figure.dataset.number = state.images;
      figure.dataset.previews = "0";
      this.parts.append(figure);
    }
    const img = figure.querySelector("img");
    const caption = figure.querySelector("figcaption");
    img.src = part.image_url.url;
    if (part.partial) {
      this.pending = figure;
      figure.classList.add("partial");
      figure.dataset.previews = String(Number(figure.dataset.previews) + 1);
      caption.textContent = `preview ${part.partial_index + 1}…`;
      return;
    }
    this.pending = null;
    figure.classList.remove("partial");
    figure.classList.add("final");
    const kind = part.image_url.url.slice(11, part.image_url.url.indexOf(";")) || "png";  // data:image/<kind>
    const link = element("a", {class: "button download", href: part.image_url.url,
                               download: `chameleon-${figure.dataset.number}.${kind}`, text: "Download"});
    caption.replaceChildren(link, ...editButtons(part.image_url.url));
    this.content.push({type: "image_url", image_url: {url: part.image_url.url}});
  }

  note(text) {
    this.meta.append(element("span", {text}));
  }

  fail(error) {
    const text = error instanceof ApiError ? error.describe() : `Could not reach the server: ${error.message}`;
    this.parts.append(element("div", {class: "error", role: "alert", text}));
    if (error.status === 401) $("api-key").focus();
  }

  done() {
    this.item.classList.remove("busy");
    if (this.pending) this.pending.querySelector("figcaption").textContent = "unfinished";
  }

  // The reply as a message for the next turn: plain text, or parts once it holds an image.
  message() {
    const onlyText = this.content.every((p) => p.type === "text");
    const content = onlyText ? this.content.map((p) => p.text).join("") : this.content;
    return content.length ? {role: "assistant", content} : null;
  }
}

// ---- sending ----

function takeInput() {
  const text = $("prompt").value.trim();
  const images = state.attachments.map((a) => ({type: "image_url", image_url: {url: a.url}}));
  if (!text && !images.length) return null;
  $("prompt").value = "";
  state.attachments = [];
  renderAttachments();
  return images.length ? [...(text ? [{type: "text", text}] : []), ...images] : text;
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
}

async function send() {
  if (state.abort) return;  // before the input is taken: it stays in the box
  const content = takeInput();
  if (content === null) return;
  await converse(content, () => fetch("/v1/chat/completions", {
    method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: state.abort.signal,
  }), (reply, chunk) => {
    for (const choice of chunk.choices || []) {
      const content = choice.delta && choice.delta.content;
      if (typeof content === "string" && content) reply.text(content);
      else if (Array.isArray(content)) content.forEach((part) => reply.image(part));
      if (choice.finish_reason === "length") reply.note("stopped at max_tokens");
    }
    if (chunk.usage) {
      const images = chunk.usage.completion_tokens_details;
      reply.note(`${chunk.usage.prompt_tokens} prompt + ${chunk.usage.completion_tokens} completion tokens` +
                 (images ? ` (${images.image_tokens} image)` : ""));
    }
  });
}

// One turn: the user's content shown and kept, then the reply streamed from ``request()`` (called once the turn
// is in the history) and each event handed to ``onEvent``; a failed turn leaves the history as it was.
async function converse(content, request, onEvent) {
  if (state.abort) return;
  const user = {role: "user", content};
  const history = state.history;  // "Clear chat" replaces it: this turn then lands in the old one
  renderUser(content);
  history.push(user);
  const reply = new Reply();
  scrollDown();
  state.abort = new AbortController();
  busy(true);
  try {
    const response = await request();
    if (!response.ok) throw await errorOf(response);
    for await (const message of events(response)) {
      onEvent(reply, message);
      scrollDown();
    }
    const message = reply.message();
    if (message) history.push(message);
  } catch (error) {
    if (error.name === "AbortError") {
      reply.note("stopped");
      const message = reply.message();
      if (message) history.push(message);
    } else {
      reply.fail(error);
      history.splice(history.indexOf(user), 1);  // a failed turn is not sent again
    }
  } finally {
    reply.done();
    state.abort = null;
    busy(false);
    scrollDown();
  }
}

// ---- edit mode: a brush over an image paints the mask of /v1/images/edits ----

const editor = {source: null, painted: false, drawing: false};

// An Edit button for an image: the model keeps the image's unpainted area.
function editButtons(url) {
  const button = element("button", {type: "button", class: "edit", text: "Edit"});
  button.addEventListener("click", () => openEditor(url));
  return [button];
}

function openEditor(url) {
  editor.source = url;
  editor.painted = false;
  const image = $("edit-image");
  image.onload = () => {
    const mask = $("edit-mask");
    mask.width = image.naturalWidth;  // the mask is the image's size, as the API asks
    mask.height = image.naturalHeight;
    mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
  };
  image.src = url;
  $("edit-prompt").value = "";
  $("editor").showModal();
  $("edit-prompt").focus();
}

function paint(event) {
  const mask = $("edit-mask");
  const box = mask.getBoundingClientRect();
  const scale = mask.width / box.width;
  const ctx = mask.getContext("2d");
  ctx.fillStyle = "#e0245e";
  ctx.beginPath();
  ctx.arc((event.clientX - box.left) * scale, (event.clientY - box.top) * scale,
          Number($("brush").value) * scale / 2, 0, 2 * Math.PI);
  ctx.fill();
  editor.painted = true;
}

// The mask as OpenAI defines it: opaque everywhere, fully transparent where the brush painted.
function maskBlob() {
  const painted = $("edit-mask");
  const mask = element("canvas");
  mask.width = painted.width;
  mask.height = painted.height;
  const ctx = mask.getContext("2d");
  ctx.fillRect(0, 0, mask.width, mask.height);
  ctx.globalCompositeOperation = "destination-out";
  ctx.drawImage(painted, 0, 0);
  return new Promise((resolve) => mask.toBlob(resolve, "image/png"));
}

function dataUrlBlob(url) {
  const [head, data] = url.split(",", 2);
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  return new Blob([bytes], {type: head.slice(5, head.indexOf(";"))});
}

async function applyEdit() {
  const text = $("edit-prompt").value.trim();
  if (!text) {
    $("edit-prompt").focus();
    return;
  }
  const form = new FormData();
  form.append("model", state.model);
  form.append("prompt", text);
  form.append("image", dataUrlBlob(editor.source), "image.png");
  if (editor.painted) form.append("mask", await maskBlob(), "mask.png");
  form.append("stream", "true");
  form.append("partial_images", $("partial_images").value.trim() || "0");
  for (const name of ["seed", "image_temperature", "image_top_p", "image_top_k"]) {
    const raw = $("settings").elements[name].value.trim();
    if (raw !== "") form.append(name, raw);
  }
  $("editor").close();
  const content = [{type: "image_url", image_url: {url: editor.source}}, {type: "text", text}];  // as the model reads it
  await converse(content, () => fetch("/v1/images/edits", {
    method: "POST", headers: headers(false), body: form, signal: state.abort.signal,
  }), (reply, event) => {
    const url = `data:image/${event.output_format};base64,${event.b64_json}`;
    const partial = event.type === "image_edit.partial_image";
    reply.image({image_url: {url}, partial, partial_index: event.partial_image_index});
    if (event.usage) reply.note(`${event.usage.input_tokens} prompt + ${event.usage.output_tokens} image tokens`);
  });
}

// ---- attachments: file picker and drag and drop ----

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function addFiles(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) {
      banner(`${file.name} is not an image (PNG, JPEG, WebP or GIF)`);
      continue;
    }
    state.attachments.push({name: file.name, url: await readAsDataURL(file)});
  }
  renderAttachments();
}

function renderAttachments() {
  const box = $("attachments");
  box.replaceChildren(...state.attachments.map((a, i) => {
    const remove = element("button", {type: "button", class: "remove", "aria-label": `remove ${a.name}`, text: "×"});
    remove.addEventListener("click", () => {
      state.attachments.splice(i, 1);
      renderAttachments();
    });
    return element("span", {class: "attachment", title: a.name},
                   element("img", {src: a.url, alt: a.name}), remove);
  }));
}

function banner(text) {
  const box = $("banner");
  box.textContent = text;
  box.hidden = !text;
}

// ---- start ----

async function start() {
  try {
    const response = await fetch("/playground/config");
    if (!response.ok) throw await errorOf(response);
    const config = await response.json();
    state.model = config.model;
    $("model").textContent = config.model;
    $("key-box").hidden = !config.api_key_required;
    offerSizes(config.image_sizes);
  } catch (error) {
    banner(error instanceof ApiError ? error.describe() : `Could not reach the server: ${error.message}`);
  }
}

// The sizes the model writes, "WxH" -> label; null while it loads: asked again until it is up.
function offerSizes(sizes) {
  if (sizes === null) {
    setTimeout(() => fetch("/playground/config").then((r) => r.json()).then((c) => offerSizes(c.image_sizes))
      .catch(() => offerSizes(null)), 2000);
    return;
  }
  $("image_size").replaceChildren(element("option", {value: "auto", text: "auto"}),
    ...Object.entries(sizes).map(([size, label]) =>
      element("option", {value: size, text: label === size ? size : `${label} (${size})`})));
}

function wire() {
  $("settings").addEventListener("submit", (e) => e.preventDefault());
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    banner("");
    send();
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("api-key").addEventListener("input", (e) => { state.key = e.target.value.trim(); });
  $("stop").addEventListener("click", () => state.abort && state.abort.abort());
  $("clear").addEventListener("click", () => {
    if (state.abort) state.abort.abort();
    state.history = [];
    $("messages").replaceChildren();
    banner("");
  });
  $("file").addEventListener("change", (e) => {
    addFiles([...e.target.files]);
    e.target.value = "";
  });
  const mask = $("edit-mask");
  mask.addEventListener("pointerdown", (e) => {
    editor.drawing = true;
    mask.setPointerCapture(e.pointerId);
    paint(e);
  });
  mask.addEventListener("pointermove", (e) => editor.drawing && paint(e));
  mask.addEventListener("pointerup", () => { editor.drawing = false; });
  $("edit-clear").addEventListener("click", () => {
    mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
    editor.painted = false;
  });
  $("edit-cancel").addEventListener("click", () => $("editor").close());
  $("edit-form").addEventListener("submit", (e) => {
    e.preventDefault();
    applyEdit();
  });
  const chat = $("chat");
  chat.addEventListener("dragover", (e) => {
    e.preventDefault();
    chat.classList.add("dragging");
  });
  chat.addEventListener("dragleave", (e) => {
    if (e.target === chat) chat.classList.remove("dragging");
  });
  chat.addEventListener("drop", (e) => {
    e.preventDefault();
    chat.classList.remove("dragging");
    addFiles([...e.dataTransfer.files]);
  });
  $("prompt").addEventListener("paste", (e) => {
    const files = [...e.clipboardData.files].filter((f) => f.type.startsWith("image/"));
    if (files.length) {
      e.preventDefault();
      addFiles(files);
    }
  });
}

wire();
start();
