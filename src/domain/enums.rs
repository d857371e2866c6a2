//! Feishu's CoreHR process enums, kept as Feishu's own numbers.
//!
//! Each enum is a newtype over the wire number rather than a Rust `enum`, so a value Feishu adds
//! later is stored and served as its number instead of being dropped or rejected. The associated
//! constants name the values documented in feishu-protocol.md §3.

macro_rules! feishu_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $value:expr),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub i32);

        impl $name {
            $($(#[$vdoc])* pub const $variant: Self = Self($value);)+

            /// Whether Feishu documents this value.
            #[allow(clippy::manual_range_patterns)]
            pub fn is_known(self) -> bool {
                matches!(self.0, $($value)|+)
            }
        }
    };
}

feishu_enum!(
    /// Status of a process instance.
    ProcessStatus {
        /// 进行中
        IN_PROGRESS = 1,
        /// 拒绝
        REJECTED = 2,
        /// 撤回
        WITHDRAWN = 4,
        /// 撤销
        REVOKED = 8,
        /// 完成
        COMPLETED = 9,
        /// 撤销中
        REVOKING = 15,
    }
);

feishu_enum!(
    /// Normal, revocation or correction process.
    ProcessProperties {
        /// 普通流程
        NORMAL = 1,
        /// 撤销流程
        REVOCATION = 2,
        /// 更正流程
        CORRECTION = 3,
    }
);

feishu_enum!(
    /// Kind of a node.
    NodeType {
        /// 审批节点
        APPROVAL = 1,
        /// 抄送节点
        CC = 2,
        /// 表单节点
        FORM = 5,
        /// 电子签
        E_SIGNATURE = 6,
    }
);

feishu_enum!(
    /// Status of a node instance.
    NodeStatus {
        /// 进行中
        IN_PROGRESS = 1,
        /// 已拒绝
        REJECTED = 2,
        /// 已通过
        PASSED = 3,
        /// 已撤回
        WITHDRAWN = 4,
        /// 已回退
        ROLLED_BACK = 5,
        /// 已跳过
        SKIPPED = 6,
        /// 已干预
        INTERVENED = 7,
    }
);

feishu_enum!(
    /// Kind of an approval task.
    TaskType {
        /// 审批单
        APPROVAL = 1,
        /// 表单
        FORM = 5,
    }
);

feishu_enum!(
    /// Status of an approval task.
    TaskStatus {
        /// 待办
        TODO = 1,
        /// 拒绝
        REJECTED = 2,
        /// 已完成
        DONE = 3,
        /// 取消
        CANCELLED = 4,
        /// 已干预
        INTERVENED = 18,
    }
);

feishu_enum!(
    /// Status of a carbon-copy task.
    CcStatus {
        /// 抄送到达
        DELIVERED = 5,
    }
);

impl ProcessStatus {
    /// Rejected, withdrawn, revoked or completed: Feishu never reopens it (a completed process
    /// may still be revoked, through `REVOKING`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::REJECTED | Self::WITHDRAWN | Self::REVOKED | Self::COMPLETED
        )
    }
}

impl TaskStatus {
    /// Rejected, done, cancelled or intervened: the task will not be open again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::REJECTED | Self::DONE | Self::CANCELLED | Self::INTERVENED
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_values_survive_as_numbers() {
        let future = ProcessStatus(42);
        assert!(!future.is_known());
        assert_eq!(future.0, 42);
        assert!(ProcessStatus::REVOKING.is_known());
        assert!(TaskStatus::INTERVENED.is_known());
        assert!(!TaskStatus(5).is_known());
    }
}
