//! Bounds and canonical form of list and watch filters: strings no longer than Feishu's own
//! (ids 64, business types 200), no more values in a repeated enum field than the enum has,
//! and repeated values sorted and deduplicated, so `[A, B]` and `[B, A]` are one filter (and
//! share page tokens). A bad value is `INVALID_ARGUMENT` with a `BadRequest` naming the field.

use super::ApiError;

/// Longest id (process, flow or node definition) in a filter.
pub const MAX_ID: usize = 64;
/// Longest business type, as Feishu documents it.
pub const MAX_BIZ_TYPE: usize = 200;

/// Refuses a string longer than `max` characters.
pub fn text(field: &'static str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

/// Refuses more values than the enum `E` has, then sorts and deduplicates them.
pub fn enums<E: TryFrom<i32>>(field: &'static str, values: &mut Vec<i32>) -> Result<(), ApiError> {
    let variants = (0..=255).filter(|v| E::try_from(*v).is_ok()).count();
    if values.len() > variants {
        return Err(ApiError::invalid(
            field,
            format!("must hold at most {variants} values, one per status or type"),
        ));
    }
    values.sort_unstable();
    values.dedup();
    Ok(())
}

/// The bounds of a process filter (ListProcesses, WatchProcesses); `statuses` made canonical.
pub fn processes(
    statuses: &mut Vec<i32>,
    biz_type: &str,
    flow_definition_id: &str,
) -> Result<(), ApiError> {
    enums::<crate::api::pb::ProcessStatus>("statuses", statuses)?;
    text("biz_type", biz_type, MAX_BIZ_TYPE)?;
    text("flow_definition_id", flow_definition_id, MAX_ID)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::pb::ProcessStatus;

    #[test]
    fn bounds_and_canonical_order() {
        let mut v = vec![9, 1, 9, 1];
        enums::<ProcessStatus>("statuses", &mut v).unwrap();
        assert_eq!(v, [1, 9]);
        let mut many = vec![1; 1000];
        assert!(enums::<ProcessStatus>("statuses", &mut many).is_err());
        assert!(text("biz_type", &"x".repeat(200), MAX_BIZ_TYPE).is_ok());
        assert!(text("biz_type", &"x".repeat(201), MAX_BIZ_TYPE).is_err());
    }
}
