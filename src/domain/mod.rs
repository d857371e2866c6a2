//! Domain types: processes, node instances, approval tasks, cc tasks, the updates events make
//! to them, and Feishu's enums. Nothing here knows about JSON, protobuf or SQL.

mod change;
mod enums;
mod event;
mod state;

pub use change::{ChangeSet, WatchFilter};
pub use enums::{
    CcStatus, NodeStatus, NodeType, ProcessProperties, ProcessStatus, TaskStatus, TaskType,
};
pub use event::{CcUpdate, Event, EventSource, NodeUpdate, ProcessUpdate, TaskUpdate, Update};
pub use state::{
    Abstract, CcInfo, CcTask, I18nText, Links, Node, Process, ProcessDetail, ProcessInfo,
    Provenance, Task, TaskInfo,
};
