//! Compiles `proto/` with protox (a pure-Rust protobuf compiler, so no system `protoc`):
//! our gRPC API (tonic/prost code plus the descriptor set server reflection serves) and
//! Feishu's long-connection frame (prost messages only).

use prost::Message;
use std::{env, path::PathBuf};

const PROTOS: &[&str] = &["processstate/v1/process_service.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("processstate_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    let frames = protox::compile(["feishu/pbbp2.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(frames)?;
    Ok(())
}
