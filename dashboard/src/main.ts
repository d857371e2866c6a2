// The process-state dashboard: follows every process over gRPC-web (WatchProcesses), folds the
// stream into a map, and renders counts, a filterable list and one process's details. It
// resumes from the last revision it received after a disconnect.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  CcStatus, NodeStatus, NodeType, ProcessService, ProcessStatus, TaskStatus, TaskType,
  type Process, type WatchEvent,
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
const time = (t?: Timestamp) => (t ? timestampDate(t).toLocaleTimeString() : "");
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

function row(cells: (string | HTMLElement)[]): HTMLTableRowElement {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (typeof c === "string") td.textContent = c; else td.append(c);
    tr.append(td);
  }
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
  const countsEl = $("counts");
  countsEl.replaceChildren(...[["ALL", processes.size] as const, ...counts].map(([s, n]) => {
    const d = el("div", s, "count");
    d.dataset.status = s;
    d.prepend(el("b", String(n)));
    return d;
  }));

  const query = ($("filter-text") as HTMLInputElement).value.trim().toLowerCase();
  const status = ($("filter-status") as HTMLSelectElement).value;
  const rows = [...processes.values()]
    .filter((p) => !status || name(ProcessStatus, p.status) === status)
    .filter((p) => !query || [p.processId, p.bizType, text(p.name), who(p.initiator), waitingFor(p)]
      .some((v) => v.toLowerCase().includes(query)))
    .sort((a, b) => Number(b.revision - a.revision))
    .slice(0, 500)
    .map((p) => {
      const title = el("span", text(p.name) || p.processId);
      title.title = p.processId;
      const tr = row([title, badge(name(ProcessStatus, p.status)), p.bizType, waitingFor(p), time(p.changeTime)]);
      tr.dataset.processId = p.processId;
      if (p.processId === selected) tr.className = "selected";
      tr.onclick = () => { selected = p.processId; render(); };
      return tr;
    });
  $("processes").replaceChildren(...rows);
  renderDetail();
}

function table(headers: string[], rows: HTMLTableRowElement[]): HTMLElement {
  if (rows.length === 0) return el("p", "none", "empty");
  const t = document.createElement("table");
  const head = document.createElement("thead");
  head.append(row(headers));
  const body = document.createElement("tbody");
  body.append(...rows);
  t.append(head, body);
  return t;
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
  );
}

function setState(text: string, cls: string) {
  const s = $("state");
  s.textContent = text;
  s.className = cls;
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
        render();
      }
    } catch (err) {
      if (err instanceof ConnectError && err.code === Code.Unauthenticated) {
        setState("unauthenticated: open this page as /#token=<your token>", "retrying");
      } else {
        setState(`reconnecting: ${err instanceof Error ? err.message : String(err)}`, "retrying");
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
