// <turbocast-stream-source>: Turbo's <turbo-stream-source>, plus reconnecting and resuming.
//
// Rendered by turbo_stream_source(transport="websocket"). It opens a WebSocket
// with the subprotocol "turbocast.v1"; every message then starts with a line
// "m <label> <id>" (or "g <label> <id>": the server's history no longer holds
// what this page missed). The element remembers the last id of each label and,
// when the socket drops, reconnects with backoff (at once after a server's
// "going away", 1001), sending those positions back as ?since=<label>~<id>, so
// the server replays exactly what the page has not applied yet.
//
// The socket's first message is "i <socket id>" (and a newline, no HTML): the
// server's id for this socket. The element keeps it, sends it back as
// ?socket=<id> when it reconnects (the socket keeps its id), and adds it to every
// same-origin request Turbo makes, as the header X-Turbocast-Socket, so a view
// can push to everyone but this tab (exclude_socket=socket_id()). Messages of a
// kind it does not know are ignored.
//
// The HTML itself is handed to Turbo, which applies it: the element is a stream
// source registered with Turbo.connectStreamSource, dispatching "message" events.
//
// Events, dispatched on the element and bubbling:
//   turbocast:connect      the socket is open
//   turbocast:disconnect   the socket closed; detail: {code, reason, retryIn}
//   turbocast:signed-out  the server closed the socket with 4003: its session or
//                          user signed out. The element does not reconnect (its
//                          URL and positions belong to the old identity); unless a
//                          listener calls preventDefault(), the page is visited
//                          again (Turbo.visit, action "replace"), so the server
//                          renders a source for whoever the cookie names now.
//   turbocast:gap          messages were lost for good; detail: {label}. Unless a
//                          listener calls preventDefault(), the page is refreshed
//                          (the server sends a <turbo-stream action="refresh">).

const PROTOCOL = "turbocast.v1";
const SOCKET_HEADER = "X-Turbocast-Socket";
const SIGNED_OUT = 4003;
const MIN_DELAY = 500;
const MAX_DELAY = 30000;

function backoff(attempt) {
  const ceiling = Math.min(MAX_DELAY, MIN_DELAY * 2 ** attempt);
  return Math.round(ceiling * (0.5 + Math.random() / 2));
}

class TurbocastStreamSource extends HTMLElement {
  connectedCallback() {
    this.closing = false;
    this.attempt = 0;
    this.positions = new Map();
    for (const value of new URL(this.src).searchParams.getAll("since")) {
      const [label, id] = value.split("~");
      if (label && id) this.positions.set(label, id);
    }
    this.whenTurbo(() => {
      if (this.closing) return;
      window.Turbo.connectStreamSource(this);
      this.open();
    });
  }

  disconnectedCallback() {
    this.closing = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000);
    if (window.Turbo) window.Turbo.disconnectStreamSource(this);
  }

  get src() {
    return this.getAttribute("src");
  }

  get connected() {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  whenTurbo(callback) {
    if (window.Turbo) callback();
    else document.addEventListener("turbo:load", callback, { once: true });
  }

  url() {
    const url = new URL(this.src);
    url.searchParams.delete("since");
    for (const [label, id] of this.positions) url.searchParams.append("since", `${label}~${id}`);
    if (this.socketId) url.searchParams.set("socket", this.socketId);
    return url.toString();
  }

  open() {
    const socket = new WebSocket(this.url(), PROTOCOL);
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.attempt = 0;
      this.setAttribute("connected", "");
      this.emit("turbocast:connect", {});
    });
    socket.addEventListener("message", (event) => this.receive(event.data));
    socket.addEventListener("close", (event) => {
      if (this.socket !== socket) return;
      this.removeAttribute("connected");
      if (this.closing) return;
      if (event.code === SIGNED_OUT) {
        this.closing = true;
        this.emit("turbocast:disconnect", { code: event.code, reason: event.reason, retryIn: null });
        if (this.emit("turbocast:signed-out", {}, true)) {
          window.Turbo.visit(location.href, { action: "replace" });
        }
        return;
      }
      const retryIn = event.code === 1001 ? 0 : backoff(this.attempt++);
      this.emit("turbocast:disconnect", { code: event.code, reason: event.reason, retryIn });
      this.timer = setTimeout(() => this.open(), retryIn);
    });
  }

  receive(data) {
    if (typeof data !== "string") return;
    const newline = data.indexOf("\n");
    const [kind, label, id] = data.slice(0, newline).split(" ");
    if (kind === "i") {
      this.socketId = label;
      return;
    }
    if (kind !== "m" && kind !== "g") return;
    const html = data.slice(newline + 1);
    if (kind === "g" && !this.emit("turbocast:gap", { label }, true)) {
      if (id && id !== "-") this.positions.set(label, id);
      return;
    }
    if (id && id !== "-") this.positions.set(label, id);
    this.dispatchEvent(new MessageEvent("message", { data: html }));
  }

  emit(name, detail, cancelable = false) {
    return this.dispatchEvent(new CustomEvent(name, { detail, bubbles: true, cancelable }));
  }
}

if (!customElements.get("turbocast-stream-source")) {
  customElements.define("turbocast-stream-source", TurbocastStreamSource);
  // The page's first source with an id names this tab; only to this site (no CORS preflight).
  document.addEventListener("turbo:before-fetch-request", (event) => {
    const { fetchOptions, url } = event.detail || {};
    if (!fetchOptions || !url || new URL(url, location.href).origin !== location.origin) return;
    const source = [...document.querySelectorAll("turbocast-stream-source")].find((s) => s.socketId);
    if (!source) return;
    const headers = fetchOptions.headers || (fetchOptions.headers = {});
    if (headers instanceof Headers) headers.set(SOCKET_HEADER, source.socketId);
    else headers[SOCKET_HEADER] = source.socketId;
  });
}
