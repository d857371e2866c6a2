//! `process-state rebuild`: the inbox is the source of truth. Every stored event is folded
//! again, in `(create_time, event_id)` order, with the ingest algorithm's own fold; the result
//! is compared with the stored state, entity by entity (values, not the change times and
//! revisions of how they got there). `--verify` writes nothing; `--apply` stores exactly the
//! differing entities as the fold has them, each under a new revision with its change row, so
//! watchers and caches see the repair and revisions never go backwards.

use super::fold::{self, Current};
use super::{PageRequest, ProcessFilter, Store, StoreError, StoredEvent};
use crate::domain::{Event, ProcessDetail};
use std::collections::{BTreeMap, BTreeSet};

/// Events folded per step.
const PAGE: u32 = 1000;

/// An entity whose stored state is not what its events fold to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// `process`, `node`, `task` or `cc_task`.
    pub entity: &'static str,
    pub id: String,
    /// Both sides, rendered (`None`: absent on that side).
    pub stored: Option<String>,
    pub folded: Option<String>,
}

/// Rows to store as they are (`Store::restate`).
#[derive(Debug, Default)]
pub struct Rows(pub(in crate::store) Current);

/// What `verify` found, and what `apply` would write.
#[derive(Debug, Default)]
pub struct Report {
    pub differences: Vec<Difference>,
    /// The folded rows of the differing entities the fold knows.
    repair: Current,
    /// The stored status of every process, for the repair's change rows.
    previous: std::collections::HashMap<String, Option<i32>>,
}

impl Report {
    /// Entities `apply` would write (a stored entity no event names cannot be restated).
    pub fn repairable(&self) -> usize {
        self.repair.processes.len()
            + self.repair.nodes.len()
            + self.repair.tasks.len()
            + self.repair.cc_tasks.len()
    }
}

/// Writes the repairable differences as new revisions; returns the last revision.
pub async fn apply(store: &dyn Store, report: Report) -> Result<i64, StoreError> {
    store.restate(Rows(report.repair), &report.previous).await
}

/// Folds the whole inbox and returns the entities whose stored state differs. `event` turns a
/// stored event into what ingest made of it (`ingest::from_inbox`); `progress` is told how
/// many events each step folded.
pub async fn verify(
    store: &dyn Store,
    event: &(dyn Fn(&StoredEvent) -> Option<Event> + Sync),
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Report, StoreError> {
    let mut current = Current::default();
    let mut after = (i64::MIN, String::new());
    loop {
        let page = store.inbox_page(&after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = (last.create_time, last.event_id.clone());
        let events: Vec<_> = page.iter().filter_map(event).collect();
        // `current` accumulates the final rows of every entity folded so far.
        fold::fold(
            &events,
            &vec![true; events.len()],
            &mut current,
            0,
            chrono::Utc::now(),
        );
        progress(page.len() as u64);
    }

    let rows = Current {
        processes: current.processes.clone(),
        nodes: current.nodes.clone(),
        tasks: current.tasks.clone(),
        cc_tasks: current.cc_tasks.clone(),
    };
    let mut folded: BTreeMap<String, ProcessDetail> = BTreeMap::new();
    for (id, row) in current.processes {
        folded.insert(
            id,
            ProcessDetail {
                process: row.into(),
                nodes: Vec::new(),
                tasks: Vec::new(),
                cc_tasks: Vec::new(),
            },
        );
    }
    let mut orphans = Vec::new();
    for row in current.nodes.into_values() {
        match folded.get_mut(&row.process_id) {
            Some(d) => d.nodes.push(row.into()),
            None => orphans.push(("node", row.process_node_id)),
        }
    }
    for row in current.tasks.into_values() {
        match folded.get_mut(&row.process_id) {
            Some(d) => d.tasks.push(row.into()),
            None => orphans.push(("task", row.approver_id)),
        }
    }
    for row in current.cc_tasks.into_values() {
        match folded.get_mut(&row.process_id) {
            Some(d) => d.cc_tasks.push(row.into()),
            None => orphans.push(("cc_task", row.approver_id)),
        }
    }

    // Every process either side knows.
    let mut ids: BTreeSet<String> = folded.keys().cloned().collect();
    let mut page = PageRequest {
        after: None,
        limit: PAGE,
    };
    loop {
        let listed = store
            .list_processes(&ProcessFilter::default(), &page)
            .await?;
        ids.extend(listed.items.iter().map(|p| p.process_id.clone()));
        if !listed.more {
            break;
        }
        page.after = listed.items.last().map(|p| p.process_id.clone());
    }

    let mut differences: Vec<Difference> = orphans
        .into_iter()
        .map(|(entity, id)| Difference {
            entity,
            id,
            stored: None,
            folded: Some("a child of no process".into()),
        })
        .collect();
    let mut previous = std::collections::HashMap::new();
    for id in ids {
        let (stored, _) = store.get_process(&id).await?;
        if let Some(s) = &stored {
            previous.insert(id.clone(), s.process.status.map(|s| s.0));
        }
        differences.extend(compare(
            &id,
            stored.map(comparable),
            folded.remove(&id).map(comparable),
        ));
    }
    let mut repair = Current::default();
    for d in &differences {
        match d.entity {
            "process" => move_row(&rows.processes, &mut repair.processes, &d.id),
            "node" => move_row(&rows.nodes, &mut repair.nodes, &d.id),
            "task" => move_row(&rows.tasks, &mut repair.tasks, &d.id),
            _ => move_row(&rows.cc_tasks, &mut repair.cc_tasks, &d.id),
        }
    }
    Ok(Report {
        differences,
        repair,
        previous,
    })
}

fn move_row<T: Clone>(
    from: &std::collections::HashMap<String, T>,
    to: &mut std::collections::HashMap<String, T>,
    id: &str,
) {
    if let Some(row) = from.get(id) {
        to.insert(id.to_owned(), row.clone());
    }
}

/// The detail without how it got there (change times, revisions), children in id order.
fn comparable(mut d: ProcessDetail) -> ProcessDetail {
    let epoch = chrono::DateTime::UNIX_EPOCH;
    d.process.provenance.change_time = epoch;
    d.process.provenance.revision = 0;
    for n in &mut d.nodes {
        (n.provenance.change_time, n.provenance.revision) = (epoch, 0);
    }
    for t in &mut d.tasks {
        (t.provenance.change_time, t.provenance.revision) = (epoch, 0);
    }
    for c in &mut d.cc_tasks {
        (c.provenance.change_time, c.provenance.revision) = (epoch, 0);
    }
    d.nodes
        .sort_by(|a, b| a.process_node_id.cmp(&b.process_node_id));
    d.tasks.sort_by(|a, b| a.approver_id.cmp(&b.approver_id));
    d.cc_tasks.sort_by(|a, b| a.approver_id.cmp(&b.approver_id));
    d
}

/// The entities of one process that differ between `stored` and `folded`.
fn compare(
    id: &str,
    stored: Option<ProcessDetail>,
    folded: Option<ProcessDetail>,
) -> Vec<Difference> {
    let mut out = Vec::new();
    let (s, f) = (stored.as_ref(), folded.as_ref());
    let show = |v: &dyn std::fmt::Debug| format!("{v:?}");
    if s.map(|d| &d.process) != f.map(|d| &d.process) {
        out.push(Difference {
            entity: "process",
            id: id.to_owned(),
            stored: s.map(|d| show(&d.process)),
            folded: f.map(|d| show(&d.process)),
        });
    }
    macro_rules! children {
        ($field:ident, $key:ident, $entity:literal) => {{
            let by_id = |d: Option<&ProcessDetail>| -> BTreeMap<String, String> {
                d.map(|d| d.$field.iter().map(|c| (c.$key.clone(), show(c))).collect())
                    .unwrap_or_default()
            };
            let (stored, folded) = (by_id(s), by_id(f));
            let keys: BTreeSet<&String> = stored.keys().chain(folded.keys()).collect();
            for key in keys {
                if stored.get(key) != folded.get(key) {
                    out.push(Difference {
                        entity: $entity,
                        id: key.clone(),
                        stored: stored.get(key).cloned(),
                        folded: folded.get(key).cloned(),
                    });
                }
            }
        }};
    }
    children!(nodes, process_node_id, "node");
    children!(tasks, approver_id, "task");
    children!(cc_tasks, approver_id, "cc_task");
    out
}
