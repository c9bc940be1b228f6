/// The gateway's web page: type a prompt, see the images, watch the queue and the workers.
///
/// Self-contained (no external scripts or styles). Elements a browser test drives have stable
/// ids: `#prompt`, `#size`, `#count`, `#api-token`, `#generate`, `#images` (one `img.result` per
/// image), `#error`, `#busy`, and for the live status `#state`, `#queue-depth`, `#in-flight`,
/// `#worker-count`, `#completed`, `#rejected`, `#mean-batch`, `#autoscaler`, `#workers` (a
/// `tbody`, one `tr.worker` per worker). The status is polled from `/v1/status` every second.
/// Each `img.result` carries its seed in `data-seed` (and its tooltip), so a picture can be remade.
///
/// The query string fills the form: `/?prompt=red+sneakers&size=64x64&n=2`; with `generate=1`
/// the page also submits it once on load (links that show a result; the headless-browser test
/// drives the page this way). The API token is never read from the URL: it would end up in
/// browser history and access logs.
enum WebPage {
    static let html = #"""
    <!doctype html>
    <html lang="en">
    <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>Sura</title>
    <style>
      body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 60rem; color: #222; }
      h1 { font-size: 1.4rem; }
      form { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; }
      #prompt { flex: 1 1 24rem; padding: .4rem; }
      #images img { width: 128px; height: 128px; image-rendering: pixelated; margin: .25rem; border: 1px solid #ccc; }
      #error { color: #b00020; min-height: 1.2em; }
      table { border-collapse: collapse; margin-top: .5rem; }
      td, th { border: 1px solid #ddd; padding: .2rem .5rem; text-align: left; font-size: .9rem; }
      .stats span { margin-right: 1.2rem; }
    </style>
    </head>
    <body>
    <h1>Sura — text to image</h1>
    <form id="generate-form">
      <input id="prompt" name="prompt" placeholder="a couple of red sneakers next to a bag" maxlength="1000" required>
      <select id="size" name="size">
        <option>32x32</option><option>64x64</option><option>128x128</option><option>256x256</option><option>512x512</option>
      </select>
      <label>n <input id="count" name="n" type="number" min="1" max="8" value="1" style="width:3.5em"></label>
      <input id="api-token" name="token" type="password" placeholder="API token (optional)" style="width:10em">
      <button id="generate" type="submit">Generate</button>
      <span id="busy" hidden>generating…</span>
    </form>
    <p id="error" role="alert"></p>
    <div id="images"></div>

    <h2>Scheduler</h2>
    <p class="stats">
      <span>state <b id="state">?</b></span>
      <span>queue <b id="queue-depth">0</b></span>
      <span>running <b id="in-flight">0</b></span>
      <span>workers <b id="worker-count">0</b></span>
      <span>completed <b id="completed">0</b></span>
      <span>rejected <b id="rejected">0</b></span>
      <span>mean batch <b id="mean-batch">0</b></span>
    </p>
    <p id="autoscaler"></p>
    <table>
      <thead><tr><th>worker</th><th>pid</th><th>state</th><th>batch</th><th>batches</th><th>images</th><th>last seen (ms)</th></tr></thead>
      <tbody id="workers"></tbody>
    </table>

    <script>
    const $ = (id) => document.getElementById(id);
    $("generate-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      $("error").textContent = "";
      $("busy").hidden = false;
      $("generate").disabled = true;
      const headers = { "Content-Type": "application/json" };
      const token = $("api-token").value.trim();
      if (token) headers["Authorization"] = "Bearer " + token;
      try {
        const response = await fetch("/v1/images/generations", {
          method: "POST", headers,
          body: JSON.stringify({ prompt: $("prompt").value, n: Number($("count").value), size: $("size").value,
                                 response_format: "b64_json" })
        });
        const body = await response.json();
        if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
        for (const item of body.data) {
          const img = document.createElement("img");
          img.className = "result";
          img.alt = $("prompt").value;
          img.dataset.seed = item.seed;
          img.title = "seed " + item.seed;
          img.src = "data:image/png;base64," + item.b64_json;
          $("images").prepend(img);
        }
      } catch (error) {
        $("error").textContent = String(error.message || error);
      } finally {
        $("busy").hidden = true;
        $("generate").disabled = false;
      }
    });

    async function refresh() {
      try {
        const status = await (await fetch("/v1/status")).json();
        $("state").textContent = status.state;
        $("queue-depth").textContent = status.queue_depth;
        $("in-flight").textContent = status.in_flight;
        $("worker-count").textContent = status.workers.length;
        $("completed").textContent = status.completed;
        $("rejected").textContent = status.rejected;
        $("mean-batch").textContent = status.mean_batch_size.toFixed(2);
        const a = status.autoscaler;
        $("autoscaler").textContent = a ? `autoscaler: ${a.action} → ${a.target} workers (${a.reason}; demand ${a.demand.toFixed(2)})` : "";
        const rows = status.workers.map((w) => {
          const tr = document.createElement("tr");
          tr.className = "worker";
          for (const value of [w.name, w.pid, w.state, w.batch_size, w.batches_done, w.images_done, Math.round(w.last_seen_ms)]) {
            const td = document.createElement("td");
            td.textContent = value;
            tr.appendChild(td);
          }
          return tr;
        });
        $("workers").replaceChildren(...rows);
      } catch (error) {
        $("state").textContent = "unreachable";
      }
    }

    // ?prompt=…&size=…&n=… fills the form and generate=1 submits it (see the doc comment above).
    const query = new URLSearchParams(location.search);
    if (query.has("prompt")) $("prompt").value = query.get("prompt");
    if ([...$("size").options].some((option) => option.value === query.get("size"))) $("size").value = query.get("size");
    if (query.has("n")) $("count").value = query.get("n");
    // requestSubmit (not submit) runs the form's validation and fires the submit handler above.
    if (query.get("generate") === "1") $("generate-form").requestSubmit();

    refresh();
    setInterval(refresh, 1000);
    </script>
    </body>
    </html>
    """#
}
