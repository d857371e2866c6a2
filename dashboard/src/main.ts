// The process-state dashboard: follows every process over gRPC-web (WatchProcesses), folds the
// stream into a map, and renders counts (click one to filter), a filterable list and one
// process's details with its history (ListProcessChanges). It resumes from the last revision
// it received after a disconnect, with a banner while it is disconnected.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  CcStatus, EventSource, NodeStatus, NodeType, ProcessService, ProcessStatus, TaskStatus, TaskType,
  type Process, type ProcessChange, type WatchEvent,
} from "./gen/processstate/v1/process_service_pb";

// With caller authentication on, open the page as /#token=<bearer token>: the fragment never
// leaves the browser (no server log sees it); it is kept in this tab's sessionStorage.
const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) {
  sessionStorage.setItem("process-state-token", fromHash);
  history.replaceState(null, "", location.pathname);
}
const token = sessionStorage.getItem("process-state-token");
const withToken: Interceptor = (next) => (req) => {
  if (token) req.header.set("authorization", `Bearer ${token}`);
  return next(req);
};
const client = createClient(
  ProcessService,
  createGrpcWebTransport({ baseUrl: location.origin, interceptors: [withToken] }),
);
const processes = new Map<string, Process>();
let revision: bigint | undefined;
let selected: string | undefined;

const $ = (id: string) => document.getElementById(id)!;
const name = (e: Record<number, string>, v: number) => e[v] ?? String(v);
// Date and time in the reader's time zone.
const time = (t?: Timestamp) => (t ? timestampDate(t).toLocaleString() : "");
// A name Feishu gave (from the REST API; events carry none), in the reader's language first.
const english = navigator.language.toLowerCase().startsWith("en");
const text = (t?: { zhCn: string; enUs: string }) =>
  t ? (english ? t.enUs || t.zhCn : t.zhCn || t.enUs) : "";
const who = (p?: { userId: string; name?: { zhCn: string; enUs: string } }) =>
  p ? text(p.name) || p.userId : "";

// Who an in-progress process waits for: its open tasks' assignees (their task ids until the
// REST API named them).
function waitingFor(p: Process): string {
  if (p.status !== ProcessStatus.IN_PROGRESS) return "";
  return p.tasks
    .filter((t) => t.status === TaskStatus.TODO)
    .map((t) => who(t.assignee) || t.approverId)
    .join(", ");
}

function el(tag: string, text = "", cls = ""): HTMLElement {
  const e = document.createElement(tag);
  e.textContent = text; // never innerHTML: values come from Feishu events
  if (cls) e.className = cls;
  return e;
}

// A table row; the cells at `wide` are hidden on narrow screens (class "wide").
function row(cells: (string | HTMLElement)[], wide: number[] = []): HTMLTableRowElement {
  const tr = document.createElement("tr");
  cells.forEach((c, i) => {
    const td = document.createElement("td");
    if (typeof c === "string") td.textContent = c; else td.append(c);
    if (wide.includes(i)) td.className = "wide";
    tr.append(td);
  });
  return tr;
}

function badge(status: string): HTMLElement {
  return el("span", status, `status s-${status}`);
}

function put<T>(rows: T[], next: T | undefined, id: (r: T) => string) {
  if (!next) return;
  const i = rows.findIndex((r) => id(r) === id(next));
  if (i >= 0) rows[i] = next; else rows.push(next);
  rows.sort((a, b) => (id(a) < id(b) ? -1 : 1));
}

function apply(event: WatchEvent) {
  const k = event.kind;
  if (k.case === "reset") processes.clear();
  else if (k.case === "snapshot") processes.set(k.value.processId, k.value);
  else if (k.case === "change") {
    const c = k.value;
    let p = processes.get(c.processId);
    if (c.process) p = { ...c.process, nodes: p?.nodes ?? [], tasks: p?.tasks ?? [], ccTasks: p?.ccTasks ?? [] };
    if (!p) return; // a child of a process not seen yet: its process row comes first
    put(p.nodes, c.node, (n) => n.processNodeId);
    put(p.tasks, c.task, (t) => t.approverId);
    put(p.ccTasks, c.ccTask, (t) => t.approverId);
    processes.set(c.processId, p);
  }
  // Snapshot and reset messages carry revision 0: they are not resume points.
  if (k.case === "reset") revision = undefined;
  else if (event.revision > 0n) revision = event.revision;
}

function render() {
  $("revision").textContent = revision === undefined ? "" : `revision ${revision}`;
  const counts = new Map<string, number>();
  for (const p of processes.values()) {
    const s = name(ProcessStatus, p.status);
    counts.set(s, (counts.get(s) ?? 0) + 1);
  }
  const select = $("filter-status") as HTMLSelectElement;
  const status = select.value;
  // A count is a filter: click it to list those processes (ALL clears the filter).
  $("counts").replaceChildren(...[["ALL", processes.size] as const, ...counts].map(([s, n]) => {
    const d = el("button", s, "count");
    d.dataset.status = s;
    if ((s === "ALL" ? "" : s) === status) d.classList.add("active");
    d.prepend(el("b", String(n)));
    d.onclick = () => { select.value = s === "ALL" ? "" : s; render(); };
    return d;
  }));

  const query = ($("filter-text") as HTMLInputElement).value.trim().toLowerCase();
  const matching = [...processes.values()]
    .filter((p) => !status || name(ProcessStatus, p.status) === status)
    .filter((p) => !query || [p.processId, p.bizType, text(p.name), who(p.initiator), waitingFor(p)]
      .some((v) => v.toLowerCase().includes(query)))
    .sort((a, b) => Number(b.revision - a.revision));
  const rows = matching.slice(0, SHOWN).map((p) => {
    const title = el("span", text(p.name) || p.processId);
    title.title = p.processId;
    const changed = el("span", time(p.changeTime));
    if (p.changeTime) changed.title = timestampDate(p.changeTime).toISOString();
    const tr = row([title, badge(name(ProcessStatus, p.status)), p.bizType, waitingFor(p), changed], [2, 4]);
    tr.dataset.processId = p.processId;
    if (p.processId === selected) tr.className = "selected";
    tr.onclick = () => { selected = p.processId; render(); };
    return tr;
  });
  $("processes").replaceChildren(...rows);
  // Never a silent cap: say how many match and how many are shown.
  $("shown").textContent = matching.length > SHOWN
    ? `Showing the ${SHOWN} most recently changed of ${matching.length} matching processes: narrow the filter to find the others.`
    : `${matching.length} of ${processes.size} processes.`;
  renderDetail();
}

// Rows the list shows at most; the note under it says when more match.
const SHOWN = 500;

function table(headers: string[], rows: HTMLTableRowElement[]): HTMLElement {
  if (rows.length === 0) return el("p", "none", "empty");
  const t = document.createElement("table");
  const head = document.createElement("thead");
  head.append(row(headers));
  const body = document.createElement("tbody");
  body.append(...rows);
  t.append(head, body);
  // Wide tables scroll inside their panel, never the page.
  const box = el("div", "", "scroll");
  box.append(t);
  return box;
}

function renderDetail() {
  const p = selected ? processes.get(selected) : undefined;
  const detail = $("detail");
  if (!p) { detail.replaceChildren(el("h2", "Select a process")); return; }
  const named = [text(p.name), p.initiator ? `started by ${who(p.initiator)}` : ""].filter(Boolean);
  detail.replaceChildren(
    el("h2", `Process ${p.processId}`),
    ...(named.length ? [el("p", named.join(" · "))] : []),
    el("p", `${name(ProcessStatus, p.status)} · ${p.bizType} · ${p.flowDefinitionId} · revision ${p.revision}`),
    el("h3", "Nodes"),
    table(["Node", "Definition", "Type", "Status"], p.nodes.map((n) =>
      row([n.processNodeId, n.nodeDefinitionId, name(NodeType, n.nodeType), badge(name(NodeStatus, n.nodeStatus))]))),
    el("h3", "Approval tasks"),
    table(["Task", "Assignee", "Node", "Type", "Status"], p.tasks.map((t) =>
      row([t.approverId, who(t.assignee), text(t.nodeName) || t.nodeDefinitionId, name(TaskType, t.type), badge(name(TaskStatus, t.status))]))),
    el("h3", "CC tasks"),
    table(["CC task", "Recipient", "Status"], p.ccTasks.map((c) => row([c.approverId, who(c.recipient), badge(name(CcStatus, c.status))]))),
    el("h3", "History"),
    historyOf(p),
  );
}

// The selected process's history, from ListProcessChanges: loaded when it is selected and again
// when it changes (its revision moved), all pages up to HISTORY_MAX changes.
const HISTORY_MAX = 1000;
let loaded: { processId: string; revision: bigint; changes: ProcessChange[]; more: boolean; prunedThrough: bigint } | undefined;
let loading: string | undefined;

function historyOf(p: Process): HTMLElement {
  const key = `${p.processId}@${p.revision}`;
  if ((!loaded || loaded.processId !== p.processId || loaded.revision !== p.revision) && loading !== key) {
    loading = key;
    loadHistory(p.processId, p.revision).finally(() => { if (loading === key) loading = undefined; });
  }
  if (!loaded || loaded.processId !== p.processId) return el("p", "loading…", "empty");
  const rows = [...loaded.changes].reverse().map((c) => row([
    String(c.revision),
    time(c.change?.changeTime),
    c.eventType.replace(/^corehr\.process\./, ""),
    name(EventSource, c.source).toLowerCase().replace("_", " "),
    whatChanged(c),
  ]));
  const box = el("div");
  box.append(table(["Revision", "Time", "Event", "Source", "What changed"], rows));
  if (loaded.more) box.append(el("p", `The ${HISTORY_MAX} oldest changes of more are shown.`, "note"));
  if (loaded.prunedThrough > 0n) box.append(el("p", `Changes up to revision ${loaded.prunedThrough} are past the change log's retention.`, "note"));
  return box;
}

function whatChanged(c: ProcessChange): string {
  const ch = c.change;
  if (!ch) return "";
  const parts: string[] = [];
  if (ch.process) parts.push(`process ${name(ProcessStatus, ch.process.status)}`);
  if (ch.node) parts.push(`node ${ch.node.nodeDefinitionId || ch.node.processNodeId} ${name(NodeStatus, ch.node.nodeStatus)}`);
  if (ch.task) parts.push(`task ${who(ch.task.assignee) || ch.task.approverId} ${name(TaskStatus, ch.task.status)}`);
  if (ch.ccTask) parts.push(`cc ${who(ch.ccTask.recipient) || ch.ccTask.approverId} ${name(CcStatus, ch.ccTask.status)}`);
  return parts.join("; ");
}

async function loadHistory(processId: string, revision: bigint) {
  const changes: ProcessChange[] = [];
  let pageToken = "";
  let prunedThrough = 0n;
  try {
    do {
      const page = await client.listProcessChanges({ processId, pageSize: 200, pageToken });
      changes.push(...page.changes);
      prunedThrough = page.prunedThrough;
      pageToken = page.nextPageToken;
    } while (pageToken && changes.length < HISTORY_MAX);
  } catch {
    return; // the next change of the process (or selecting it again) tries again
  }
  loaded = { processId, revision, changes, more: pageToken !== "", prunedThrough };
  if (selected === processId) renderDetail();
}

function setState(text: string, cls: string) {
  const s = $("state");
  s.textContent = text;
  s.className = cls;
}

// Shown while the stream is down: what happened, and that the list resumes where it was.
function banner(message: string | undefined) {
  const b = $("banner");
  b.textContent = message ?? "";
  b.className = message ? "shown" : "";
}

async function follow() {
  for (;;) {
    try {
      setState("connecting", "");
      // Without a resume point, a fresh snapshot follows: drop what a cut-off one left.
      if (revision === undefined) processes.clear();
      const request = revision === undefined ? {} : { startRevision: revision };
      for await (const response of client.watchProcesses(request)) {
        if (!response.event) continue;
        apply(response.event);
        setState("live", "live");
        banner(undefined);
        render();
      }
      throw new Error("the stream ended");
    } catch (err) {
      if (err instanceof ConnectError && err.code === Code.Unauthenticated) {
        setState("unauthenticated: open this page as /#token=<your token>", "retrying");
      } else {
        const why = err instanceof Error ? err.message : String(err);
        setState("reconnecting", "retrying");
        banner(revision === undefined
          ? `Disconnected from the service (${why}). Reconnecting every second…`
          : `Disconnected from the service (${why}). Reconnecting every second; what is shown is as of revision ${revision} and resumes from there.`);
      }
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

const statusSelect = $("filter-status");
for (const [key, value] of Object.entries(ProcessStatus)) {
  if (typeof value === "number" && value !== 0) {
    const option = el("option", key) as HTMLOptionElement;
    option.value = key;
    statusSelect.append(option);
  }
}
$("filter-text").oninput = render;
statusSelect.onchange = render;
follow();
