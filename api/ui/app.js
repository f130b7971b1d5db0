// jobgate's live page: signs in with an API key, polls the JSON API with it and shows what
// that key may see. Everything the API answers is written as text (textContent, element
// properties), never parsed as HTML; the page's CSP allows no inline script or style.

const POLL_MS = 1500;
const KEY_STORAGE = "jobgate.apiKey";
const RATE_WINDOW_MS = 30000;
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];

const $ = (id) => document.getElementById(id);

const session = {
  key: null,
  scope: null, // "tenant" | "operator"
  generation: 0, // bumped at sign-out, so a poll of an old session stops
  openJob: null,
  samples: new Map(), // batch id -> [{t, done}], for its rate
};

class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

async function call(path, key = session.key) {
  const response = await fetch(path, {
    headers: { Authorization: `Bearer ${key}`, Accept: "application/json" },
    cache: "no-store",
    credentials: "omit",
  });
  const text = await response.text();
  if (!response.ok) {
    let type = "http_error";
    let message = `${response.status} ${response.statusText}`;
    try {
      const error = JSON.parse(text).error;
      type = String(error.type);
      message = String(error.message);
    } catch {
      // Not jobgate's error shape (a proxy's page, say): the status line says enough.
    }
    throw new ApiError(response.status, type, message);
  }
  return path === "/metrics" ? text : JSON.parse(text);
}

// --- Building and updating elements (text only) --------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "className") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node[name] = value;
  }
  node.append(...children.map((child) => (child instanceof Node ? child : String(child))));
  return node;
}

function setText(node, value) {
  const text = value === null || value === undefined ? "—" : String(value);
  if (node.textContent !== text) node.textContent = text;
}

// Rows keyed by id are updated in place, so a row someone is about to click stays the same node.
function syncRows(tbody, items, keyOf, cellsOf) {
  const existing = new Map([...tbody.rows].map((row) => [row.dataset.key, row]));
  const rows = items.map((item, index) => {
    const key = keyOf(item, index);
    const cells = cellsOf(item);
    let row = existing.get(key);
    if (!row) {
      row = el("tr", { dataset: { key } }, ...cells.map(() => el("td")));
    }
    existing.delete(key);
    cells.forEach((cell, i) => {
      const td = row.cells[i];
      if (typeof cell === "function") cell(td);
      else setText(td, cell);
    });
    return row;
  });
  for (const stale of existing.values()) stale.remove();
  rows.forEach((row, i) => {
    if (tbody.rows[i] !== row) tbody.insertBefore(row, tbody.rows[i] || null);
  });
  return rows;
}

function jobButton(jobId) {
  return (td) => {
    let button = td.querySelector("button");
    if (!button) {
      button = el("button", { type: "button", className: "link" });
      td.append(button);
    }
    button.dataset.jobId = jobId;
    setText(button, jobId);
  };
}

function progressCell(done, total) {
  return (td) => {
    let bar = td.querySelector("progress");
    let pct = td.querySelector(".pct");
    if (!bar) {
      bar = el("progress");
      pct = el("span", { className: "pct" });
      td.append(bar, pct);
    }
    bar.max = Math.max(total, 1);
    bar.value = done;
    setText(pct, `${total ? Math.floor((done * 100) / total) : 100}%`);
  };
}

function fillCounts(dl, counts, names) {
  dl.replaceChildren(
    ...names.flatMap((name) => [
      el("dt", {}, name),
      el("dd", { dataset: { state: name } }, String(counts[name] ?? 0)),
    ]),
  );
}

// --- Formatting ----------------------------------------------------------------------------

function time(iso) {
  return iso ? new Date(iso).toLocaleString() : null;
}

function duration(seconds) {
  if (!Number.isFinite(seconds)) return null;
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function rate(perSecond) {
  if (!Number.isFinite(perSecond) || perSecond <= 0) return null;
  return perSecond >= 10 ? `${Math.round(perSecond)}/s` : `${perSecond.toFixed(1)}/s`;
}

function headroom(available, limit) {
  if (limit === null || limit === undefined) return "unlimited";
  return `${Math.floor(available ?? 0)} / ${limit}`;
}

// --- Tenant view ---------------------------------------------------------------------------

function batchDone(counts) {
  return counts.succeeded + counts.failed + counts.cancelled;
}

// Jobs per second over the last half minute of this page's own samples; before it has two,
// or once the batch is over, the batch's average since it was made.
function batchRate(batch, now) {
  const done = batchDone(batch.counts);
  const history = (session.samples.get(batch.id) || []).filter((s) => now - s.t <= RATE_WINDOW_MS);
  history.push({ t: now, done });
  session.samples.set(batch.id, history);
  const over = batch.completed_at !== null;
  const first = history[0];
  if (!over && now - first.t >= 1000) return ((done - first.done) * 1000) / (now - first.t);
  const end = over ? Date.parse(batch.completed_at) : now;
  const elapsed = (end - Date.parse(batch.created_at)) / 1000;
  return elapsed > 0 ? done / elapsed : NaN;
}

function renderBatches(batches) {
  const now = Date.now();
  const live = new Set(batches.map((b) => b.id));
  for (const id of session.samples.keys()) if (!live.has(id)) session.samples.delete(id);
  syncRows($("batches").tBodies[0], batches, (b) => b.id, (batch) => {
    const { counts } = batch;
    const done = batchDone(counts);
    const perSecond = batchRate(batch, now);
    const remaining = counts.total - done;
    let eta = null;
    if (remaining === 0) eta = "done";
    else if (perSecond > 0) eta = duration(remaining / perSecond);
    return [
      (td) => {
        td.closest("tr").dataset.batchId = batch.id;
        setText(td, batch.id);
      },
      batch.status,
      progressCell(done, counts.total),
      `${done} / ${counts.total}`,
      counts.succeeded,
      counts.failed,
      rate(perSecond),
      eta,
      time(batch.created_at),
    ];
  });
  $("batches-empty").hidden = batches.length > 0;
}

function renderFailures(jobs) {
  syncRows($("failures").tBodies[0], jobs, (j) => j.id, (job) => [
    jobButton(job.id),
    job.batch_id,
    job.custom_id,
    job.error ? job.error.type : null,
    job.error ? job.error.message : null,
    time(job.finished_at),
  ]);
  $("failures-empty").hidden = jobs.length > 0;
}

async function refreshTenant() {
  const [counts, batches, failures] = await Promise.all([
    call("/v1/job-counts"),
    call("/v1/batches?limit=10"),
    call("/v1/jobs?status=failed&limit=20"),
  ]);
  fillCounts($("counts"), counts.counts, [...STATES, "total"]);
  renderBatches(batches.data);
  renderFailures(failures.data);
  if (session.openJob) await refreshJob(session.openJob);
}

// --- A job's detail ------------------------------------------------------------------------

function jobFields(job) {
  const served = job.served_by ? `${job.served_by.provider} / ${job.served_by.model ?? "—"}` : null;
  const usage = job.usage ? `${job.usage.input_tokens} in, ${job.usage.output_tokens} out` : null;
  return [
    ["Status", job.status],
    ["Model", job.model],
    ["Priority", job.priority],
    ["Batch", job.batch_id],
    ["Custom id", job.custom_id],
    ["Attempts", job.attempts],
    ["Created", time(job.created_at)],
    ["Started", time(job.started_at)],
    ["Finished", time(job.finished_at)],
    ["Served by", served],
    ["Usage", usage],
    ["Cost (USD)", job.cost_usd],
    ["Cached", job.cached ? "yes" : "no"],
  ];
}

async function refreshJob(jobId) {
  let job, attempts, deliveries;
  try {
    [job, attempts, deliveries] = await Promise.all([
      call(`/v1/jobs/${encodeURIComponent(jobId)}`),
      call(`/v1/jobs/${encodeURIComponent(jobId)}/attempts`),
      call(`/v1/jobs/${encodeURIComponent(jobId)}/deliveries`),
    ]);
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 404) throw error;
    if (session.openJob === jobId) setText($("job-problem"), `No job ${jobId} for this key.`);
    return;
  }
  if (session.openJob !== jobId) return; // another job was opened meanwhile
  $("job-problem").textContent = "";
  const detail = $("job-detail");
  detail.dataset.status = job.status;
  $("job-fields").replaceChildren(
    ...jobFields(job).flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value ?? "—")]),
  );
  setText($("job-error-type"), job.error ? job.error.type : "none");
  setText($("job-error-message"), job.error ? job.error.message : "");
  // Attempts only ever grow, oldest first: a row per position.
  syncRows($("attempts").tBodies[0], attempts.data, (a, index) => String(index), (a) => [
    a.attempt,
    a.provider,
    a.model,
    a.outcome,
    a.error,
    a.latency_ms === null ? null : `${a.latency_ms} ms`,
    time(a.started_at),
  ]);
  syncRows($("deliveries").tBodies[0], deliveries.data, (d) => d.id, (d) => {
    const last = d.attempts.length ? d.attempts[d.attempts.length - 1] : null;
    return [d.event_type, d.url, d.status, d.attempts.length, last ? last.status_code : null, last ? last.error : null];
  });
  $("deliveries-empty").hidden = deliveries.data.length > 0;
}

function openJob(jobId) {
  session.openJob = jobId;
  setText($("job-id"), jobId);
  $("job-problem").textContent = "";
  $("job-fields").replaceChildren();
  $("job-error-type").textContent = "";
  $("job-error-message").textContent = "";
  $("attempts").tBodies[0].replaceChildren();
  $("deliveries").tBodies[0].replaceChildren();
  delete $("job-detail").dataset.status;
  $("job-detail").hidden = false;
  history.replaceState(null, "", `#job=${encodeURIComponent(jobId)}`);
  refreshJob(jobId)
    .then(() => $("job-detail").scrollIntoView({ block: "start" }))
    .catch(showProblem);
}

function closeJob() {
  session.openJob = null;
  $("job-detail").hidden = true;
  history.replaceState(null, "", location.pathname);
}

// --- Operator view -------------------------------------------------------------------------

// Prometheus text exposition: [{name, labels, value}] for every sample line.
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    const match = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const label of (match[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[label[1]] = label[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

function sum(samples, name, where = () => true) {
  return samples.filter((s) => s.name === name && where(s.labels)).reduce((total, s) => total + s.value, 0);
}

async function refreshOperator() {
  const [providers, metricsText] = await Promise.all([call("/v1/providers"), call("/metrics")]);
  const metrics = parseMetrics(metricsText);
  const calls = "jobgate_upstream_requests_total";
  syncRows($("providers").tBodies[0], providers.data, (p) => p.provider, (p) => {
    const mine = (labels) => labels.provider === p.provider;
    const failed = (labels) => mine(labels) && !["succeeded", "cached"].includes(labels.outcome);
    return [
      p.provider,
      p.kind,
      (td) => {
        td.className = `breaker-${p.breaker}`;
        setText(td, p.breaker);
      },
      headroom(p.rpm_available, p.rpm),
      headroom(p.tpm_available, p.tpm),
      time(p.paused_until),
      sum(metrics, calls, mine),
      sum(metrics, calls, (labels) => mine(labels) && labels.outcome === "rate_limited"),
      sum(metrics, calls, failed),
      (p.targets || [])
        .map((t) => `${t.model}: ${t.breaker}, ${Math.round((t.error_rate || 0) * 100)}% errors`)
        .join("; ") || null,
    ];
  });
  const depths = metrics.filter((s) => s.name === "jobgate_queue_depth");
  syncRows($("queues").tBodies[0], depths, (s) => s.labels.queue, (s) => [s.labels.queue, s.value]);
  setText($("oldest-queued"), duration(sum(metrics, "jobgate_oldest_queued_age_seconds")));
  const finished = {};
  for (const state of ["succeeded", "failed", "cancelled"]) {
    finished[state] = sum(metrics, "jobgate_jobs_finished_total", (labels) => labels.status === state);
  }
  fillCounts($("finished"), finished, Object.keys(finished));
}

// --- Signing in and polling ----------------------------------------------------------------

function showProblem(error) {
  if (error instanceof ApiError && (error.status === 401 || error.type === "permission_denied")) {
    signOut(`Signed out: ${error.message}`);
    return;
  }
  setText($("status"), `Update failed: ${error.message}`);
  $("status").className = "error";
}

async function scopeOf(key) {
  try {
    await call("/v1/providers", key);
    return "operator";
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) return "tenant";
    throw error;
  }
}

async function poll(generation) {
  if (generation !== session.generation) return;
  if (!document.hidden) {
    try {
      await (session.scope === "operator" ? refreshOperator() : refreshTenant());
      if (generation !== session.generation) return;
      setText($("status"), `Updated ${new Date().toLocaleTimeString()}`);
      $("status").className = "";
    } catch (error) {
      if (generation !== session.generation) return;
      showProblem(error);
    }
  }
  if (generation === session.generation) setTimeout(() => poll(generation), POLL_MS);
}

// The job named by the URL's `#job=ID`, if any.
function linkedJob() {
  const match = /^#job=(.+)$/.exec(location.hash);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null; // a mangled link: open nothing rather than fail the sign-in
  }
}

async function signIn(key) {
  const scope = await scopeOf(key);
  session.key = key;
  session.scope = scope;
  session.generation += 1;
  sessionStorage.setItem(KEY_STORAGE, key);
  setText($("who"), scope === "operator" ? "Operator key" : "Tenant key");
  $("sign-in").hidden = true;
  $("sign-out").hidden = false;
  $("tenant-view").hidden = scope !== "tenant";
  $("operator-view").hidden = scope !== "operator";
  const linked = linkedJob();
  if (scope === "tenant" && linked) openJob(linked);
  poll(session.generation);
}

function signOut(message = "") {
  session.key = null;
  session.scope = null;
  session.openJob = null;
  session.generation += 1;
  session.samples.clear();
  sessionStorage.removeItem(KEY_STORAGE);
  setText($("who"), "");
  setText($("status"), "");
  $("sign-in-error").textContent = message;
  for (const id of ["tenant-view", "operator-view", "job-detail", "sign-out"]) $(id).hidden = true;
  for (const id of ["batches", "failures", "providers", "queues", "attempts", "deliveries"]) {
    $(id).tBodies[0].replaceChildren();
  }
  $("sign-in").hidden = false;
}

function start() {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("api-key");
    const key = input.value.trim();
    $("sign-in-error").textContent = "";
    signIn(key)
      .then(() => {
        input.value = "";
      })
      .catch((error) => {
        $("sign-in-error").textContent = `Cannot sign in: ${error.message}`;
      });
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("job-close").addEventListener("click", closeJob);
  $("open-job-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const jobId = $("open-job-id").value.trim();
    if (jobId) openJob(jobId);
  });
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-job-id]");
    if (button) openJob(button.dataset.jobId);
  });
  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) signIn(saved).catch((error) => signOut(`Signed out: ${error.message}`));
}

start();
