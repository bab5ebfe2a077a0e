// The hashray search page: plain JavaScript over the service's JSON API, no build step.
// The page is served at the app's root; every request goes relative to it, so it works under
// any route prefix. The bearer token, when the service asks for one, lives in `token` only.
"use strict";
(() => {
  const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
  const $ = (id) => document.getElementById(id);

  let token = null; // never written to storage: reloading the page forgets it
  let info = null; // GET /info
  let dataset = null; // GET /dataset, or null when the service has no --data
  let query = null; // what the next page asks: {code}, {id} or {file, name} (first page only)
  let queryLabels = null; // label ids of the query when known (dataset items), else null
  let k = 24; // results asked for: a page size, grown by "more"
  let results = [];
  let objectUrls = []; // thumbnails of the grid on show, released on the next render
  const items = new Map(); // id -> Promise of the item (labels), or of null
  const images = new Map(); // id -> Promise of the image Blob, or of null

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function detailOf(body, status) {
    if (body && typeof body.detail === "string") return body.detail;
    if (body && Array.isArray(body.detail)) {
      return body.detail
        .map((d) => (d.loc ? `${d.loc[d.loc.length - 1]}: ` : "") + d.msg)
        .join("; ");
    }
    return `the service answered HTTP ${status}`;
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (token !== null) headers.set("Authorization", `Bearer ${token}`);
    let response;
    try {
      response = await fetch(base + path, { ...options, headers });
    } catch (err) {
      throw new ApiError(0, `the service did not answer (${err.message})`);
    }
    if (response.ok) return response;
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.status === 401) showTokenForm();
    throw new ApiError(response.status, `${detailOf(body, response.status)} (HTTP ${response.status})`);
  }

  const getJson = async (path) => (await api(path)).json();
  const postJson = async (path, body) =>
    (
      await api(path, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      })
    ).json();

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
  }

  async function busy(work) {
    document.body.dataset.busy = "1";
    $("error").hidden = true;
    try {
      await work();
    } catch (err) {
      showError(err.message || String(err));
    } finally {
      document.body.dataset.busy = "0";
    }
  }

  function showTokenForm() {
    $("token-form").hidden = false;
    $("token-input").focus();
  }

  function setText(id, text) {
    $(id).textContent = text;
  }

  async function start() {
    await busy(async () => {
      info = await getJson("info");
      setText("info-model", info.model_version ?? "unknown");
      setText("info-index", info.index_version.slice(0, 12));
      $("info-index").title = info.index_version;
      setText("info-bits", String(info.bits));
      setText("info-items", info.codes.toLocaleString());
      $("radius-input").max = String(info.bits);
      try {
        dataset = await getJson("dataset");
      } catch (err) {
        if (err.status !== 404) throw err;
        dataset = null;
        $("notice").textContent = `Ids only: ${err.message.replace(/ \(HTTP 404\)$/, "")}.`;
        $("notice").hidden = false;
      }
      setText("info-dataset", dataset ? `${dataset.name} (${dataset.classes.length} classes)` : "none");
      setupControls();
      $("app").hidden = false;
    });
  }

  function setupControls() {
    $("random-button").disabled = !dataset;
    $("random-button").title = dataset ? "" : "needs a service started with --data";
    $("file-input").disabled = !info.encoder;
    $("drop-zone").classList.toggle("disabled", !info.encoder);
    if (!info.encoder) {
      $("drop-zone").querySelector("p").textContent =
        "Image queries need a service started with --model; query by id or hex code.";
    }
    const filter = $("label-filter");
    filter.replaceChildren(new Option("all labels", ""));
    if (dataset) {
      dataset.classes.forEach((name, i) => filter.append(new Option(`${i}: ${name}`, String(i))));
      $("filter-label").hidden = false;
    }
  }

  const mode = () => document.querySelector("input[name=mode]:checked").value;
  const pageSize = () => Number($("k-select").value);
  const radius = () => Number($("radius-input").value);
  const maxK = () => info.limits.max_k;

  function itemOf(id) {
    if (!dataset) return Promise.resolve(null);
    if (!items.has(id)) {
      items.set(
        id,
        getJson(`items/${encodeURIComponent(id)}`).catch(() => null),
      );
    }
    return items.get(id);
  }

  function imageOf(id) {
    if (!dataset) return Promise.resolve(null);
    if (!images.has(id)) {
      images.set(
        id,
        api(`items/${encodeURIComponent(id)}/image`)
          .then((r) => r.blob())
          .catch(() => null),
      );
    }
    return images.get(id);
  }

  // A new query: the first page of its results.
  async function newQuery(next, labels, caption, blob) {
    query = next;
    queryLabels = labels;
    k = Math.min(pageSize(), maxK());
    const view = $("query-image");
    if (view.src.startsWith("blob:")) URL.revokeObjectURL(view.src);
    view.hidden = !blob;
    if (blob) view.src = URL.createObjectURL(blob);
    setText("query-caption", caption);
    $("query-view").hidden = false;
    await fetchPage();
  }

  async function fetchPage() {
    const within = mode() === "radius" ? radius() : null;
    const started = performance.now();
    let answer;
    if (query.file) {
      const form = new FormData();
      form.append("file", query.file, query.name);
      form.append("k", String(k));
      if (within !== null) form.append("radius", String(within));
      answer = await (await api("search/image", { method: "POST", body: form })).json();
      query = { code: answer.code }; // later pages ask by the code: no second upload
      $("query-caption").textContent += ` · code ${answer.code}`;
    } else {
      const body = { ...query, k };
      if (within !== null) body.radius = within;
      answer = await postJson("search", body);
    }
    setText("info-latency", `${Math.round(performance.now() - started)} ms`);
    setText("info-index", answer.index_version.slice(0, 12));
    results = answer.results;
    await render(within);
  }

  function shares(labels) {
    return queryLabels !== null && labels.some((label) => queryLabels.includes(label));
  }

  function labelText(item) {
    if (!item) return dataset ? "not in the dataset" : "";
    const named = (l, i) => (item.label_names[i] === String(l) ? String(l) : `${l} ${item.label_names[i]}`);
    return `label ${item.labels.map(named).join(", ")}`;
  }

  async function render(within) {
    objectUrls.forEach((url) => URL.revokeObjectURL(url));
    objectUrls = [];
    const cards = results.map((hit, rank) => {
      const card = document.createElement("li");
      card.className = "card";
      card.dataset.id = hit.id;
      card.dataset.distance = String(hit.distance);
      if (dataset) {
        const img = document.createElement("img");
        img.alt = hit.id;
        card.append(img);
      }
      const id = document.createElement("span");
      id.className = "id";
      id.textContent = `${rank + 1}. ${hit.id}`;
      const distance = document.createElement("span");
      distance.className = "distance";
      distance.textContent = `distance ${hit.distance}`;
      const labels = document.createElement("span");
      labels.className = "labels";
      card.append(id, distance, labels);
      return card;
    });
    $("results").replaceChildren(...cards);
    const more = results.length === k && k < maxK();
    $("more-button").hidden = !more;
    $("more-button").textContent = within === null ? "more" : `more within radius ${within}`;
    summarize(within, null);
    const filled = await Promise.all(results.map((hit, i) => fillCard(cards[i], hit)));
    summarize(within, filled);
    applyFilter();
  }

  async function fillCard(card, hit) {
    const [item, blob] = await Promise.all([itemOf(hit.id), imageOf(hit.id)]);
    card.querySelector(".labels").textContent = labelText(item);
    card.dataset.labels = item ? item.labels.join(",") : "";
    if (item && queryLabels !== null) card.classList.add(shares(item.labels) ? "match" : "miss");
    const img = card.querySelector("img");
    if (img && blob) {
      const url = URL.createObjectURL(blob);
      objectUrls.push(url);
      img.src = url;
      await img.decode().catch(() => undefined);
    } else if (img) {
      img.replaceWith(Object.assign(document.createElement("div"), {
        className: "no-image",
        textContent: "no image",
      }));
    }
    return item;
  }

  function summarize(within, filled) {
    let text = `${results.length} result${results.length === 1 ? "" : "s"}`;
    if (within !== null) text += ` within distance ${within}`;
    if (results.length === k) text += within === null ? "" : " (more may follow)";
    if (!dataset) {
      text += " · ids only: the service has no --data";
    } else if (filled && queryLabels !== null) {
      const share = filled.filter((item) => item && shares(item.labels)).length;
      text += ` · ${share} of ${results.length} share a label with the query`;
    } else if (filled) {
      text += " · the query's labels are unknown (an uploaded file)";
    }
    setText("summary", text);
  }

  function applyFilter() {
    const wanted = $("label-filter").value;
    for (const card of $("results").children) {
      const labels = (card.dataset.labels || "").split(",");
      card.hidden = wanted !== "" && !labels.includes(wanted);
    }
  }

  // ---- query inputs

  function queryFile(file) {
    busy(() => newQuery({ file, name: file.name }, null, `${file.name} · labels unknown`, file));
  }

  $("file-input").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) queryFile(file);
    event.target.value = "";
  });

  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const [file] = event.dataTransfer.files;
    if (file && info.encoder) queryFile(file);
  });

  $("random-button").addEventListener("click", () =>
    busy(async () => {
      // with a model: a held-out query image through the encoder; without: an indexed id
      const split = info.encoder && dataset.splits.query > 0 ? "query" : "database";
      const item = await getJson(`sample?split=${split}`);
      items.set(item.id, Promise.resolve(item));
      const blob = await imageOf(item.id);
      const caption = `${item.id} (${item.split}) · ${labelText(item)}`;
      const next = info.encoder && blob ? { file: blob, name: `${item.id}.png` } : { id: item.id };
      await newQuery(next, item.labels, caption, blob);
    }),
  );

  $("text-query").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text-input").value.trim();
    if (!text) return;
    busy(async () => {
      const hexLength = Math.ceil(info.bits / 8) * 2;
      if (/^[0-9a-fA-F]+$/.test(text) && text.length === hexLength) {
        await newQuery({ code: text.toLowerCase() }, null, `code ${text}`, null);
        return;
      }
      const item = await itemOf(text);
      const caption = item ? `${text} (${item.split}) · ${labelText(item)}` : text;
      await newQuery({ id: text }, item ? item.labels : null, caption, await imageOf(text));
    });
  });

  const again = () => {
    if (query) {
      k = Math.min(pageSize(), maxK());
      busy(fetchPage);
    }
  };
  $("radius-input").addEventListener("input", () => setText("radius-value", $("radius-input").value));
  $("radius-input").addEventListener("change", again);
  $("k-select").addEventListener("change", again);
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", again);
  }
  $("label-filter").addEventListener("change", applyFilter);
  $("more-button").addEventListener("click", () => {
    k = Math.min(k + pageSize(), maxK());
    busy(fetchPage);
  });

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token-input").value;
    $("token-input").value = "";
    $("token-form").hidden = true;
    start();
  });

  start();
})();
