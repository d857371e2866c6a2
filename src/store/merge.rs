//! The per-field merge of invariant 3: a field takes its value from the newest event, by
//! `(create_time, event_id)`, that carries it; a field an event lacks keeps its value. The
//! final row is then a function of the set of events, whatever order they arrive in, though
//! every field is optional on the wire. Each row keeps, per field, the key of the event that
//! set it ([`Versions`]), and its own stamp: the newest event of that entity.
//!
//! An observation of Feishu's REST API merges like an event, timed by Feishu's clock, with
//! two differences: it never moves an entity's own stamp (it is not an event of the entity, so
//! an unchanged entity gets no revision from it), and it never moves a terminal status back
//! ([`observed_status`]): a lagging answer must not reopen a finished process or task.

use super::rows::Versions;
use crate::domain::{Event, EventSource};

/// One event merged into one row.
#[derive(Debug)]
pub(super) struct Merge<'e> {
    key: (i64, &'e str),
    /// The stored row's own stamp: it stands in for fields without a stamp of their own (rows
    /// written before stamps were kept).
    legacy: Option<(i64, String)>,
    pub versions: Versions,
    /// A value changed: watchers must hear of it.
    pub changed: bool,
    /// A stamp moved: the row must be written, even when no value changed.
    pub stamped: bool,
    /// The event is a REST observation.
    observation: bool,
}

impl<'e> Merge<'e> {
    /// `versions` and `stamp` are the stored row's, when there is one.
    pub fn new(event: &'e Event, versions: Option<&Versions>, stamp: Option<(i64, &str)>) -> Self {
        Self {
            key: (event.create_time, event.event_id.as_str()),
            legacy: stamp.map(|(t, id)| (t, id.to_owned())),
            versions: versions.cloned().unwrap_or_default(),
            changed: false,
            stamped: false,
            observation: event.source == EventSource::Rest,
        }
    }

    /// The field's value after the event: the event's, when it carries one and is newer than
    /// what set the field; else the stored one.
    pub fn field<T: Clone + PartialEq>(
        &mut self,
        name: &str,
        new: &Option<T>,
        old: Option<&T>,
    ) -> Option<T> {
        let Some(value) = new else {
            return old.cloned();
        };
        let set_by = match (self.versions.get(name), old.is_some()) {
            (Some((time, id)), _) => Some((*time, id.as_str())),
            (None, true) => self.legacy.as_ref().map(|(t, id)| (*t, id.as_str())),
            (None, false) => None,
        };
        if set_by.is_some_and(|stamp| stamp >= self.key) {
            return old.cloned();
        }
        self.versions
            .insert(name.to_owned(), (self.key.0, self.key.1.to_owned()));
        self.stamped = true;
        self.changed |= old != Some(value);
        Some(value.clone())
    }

    /// The entity's own stamp after an event OF this entity: the newer of the stored one and
    /// the event's. It is part of the row's state (its `event_time`), so moving it is a change.
    /// A REST observation keeps the stored stamp, and stamps only an entity it creates.
    pub fn entity(&mut self, stored: Option<(i64, &str)>) -> (i64, String) {
        match stored {
            Some(stamp) if stamp >= self.key || self.observation => (stamp.0, stamp.1.to_owned()),
            _ => {
                self.stamped = true;
                self.changed = true;
                (self.key.0, self.key.1.to_owned())
            }
        }
    }
}

/// The status an event may set: an observation that would reopen a finished process or task
/// (`reopens(old, new)`) is dropped, as Feishu never does that and a REST answer saying so is
/// stale. Events are taken as they come.
pub(super) fn observed_status(
    event: &Event,
    new: Option<i32>,
    old: Option<i32>,
    reopens: fn(i32, i32) -> bool,
) -> Option<i32> {
    match (new, old) {
        (Some(new), Some(old)) if event.source == EventSource::Rest && reopens(old, new) => None,
        _ => new,
    }
}
