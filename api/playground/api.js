// The server's HTTP API as the playground uses it: JSON calls, an SSE reader, errors in OpenAI's shape.
// Nothing here touches the page.

export class ApiError extends Error {
  // An error the API worded: its message and the parameter it names (OpenAI's `error` object).
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.param = error.param ?? null;
    this.code = error.code ?? null;
  }
  describe() {
    return `${this.status ? this.status + " " : ""}${this.message}` +
      (this.param ? ` (param: ${this.param})` : "") + (this.code ? ` [${this.code}]` : "");
  }
}

export class Api {
  constructor(base = "", key = () => "") {
    this.base = base;
    this.key = key;
  }

  headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    const key = this.key();
    if (key) h["Authorization"] = `Bearer ${key}`;
    return h;
  }

  async get(path) {
    const r = await fetch(this.base + path, { headers: this.headers(false) });
    return this.#read(r);
  }

  async post(path, body, signal) {
    const r = await fetch(this.base + path, {
      method: "POST", headers: this.headers(true), body: JSON.stringify(body), signal,
    });
    return this.#read(r);
  }

  async #read(r) {
    let payload = null;
    try { payload = await r.json(); } catch { payload = null; }
    if (!r.ok) throw new ApiError(r.status, (payload && payload.error) || { message: r.statusText });
    return payload;
  }

  // POST with `stream: true`; calls onChunk(chunk) per `data:` event; resolves at `[DONE]`.
  // An error event (the API's last event mid-stream) rejects with ApiError. `signal` aborts it
  // (the server stops generating when the connection closes).
  async stream(path, body, onChunk, signal) {
    const r = await fetch(this.base + path, {
      method: "POST", headers: this.headers(true), body: JSON.stringify({ ...body, stream: true }), signal,
    });
    if (!r.ok) return this.#read(r);
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, cut).replace(/\r$/, "");
        buffer = buffer.slice(cut + 1);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(0, chunk.error);
        onChunk(chunk);
      }
    }
  }
}
