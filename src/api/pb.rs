//! Code generated from `proto/processstate/v1/process_service.proto`, and the descriptor set
//! server reflection serves.
#![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]

tonic::include_proto!("processstate.v1");

/// Encoded `FileDescriptorSet` of our protos and their imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/processstate_descriptor.bin"));
