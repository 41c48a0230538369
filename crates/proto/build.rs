//! Generates the wire types from `proto/`, with a protoc that ships as a crate, so a fresh machine
//! needs nothing but Rust. The path goes to the code generator directly; `PROTOC` is never set,
//! because raft-rs's build accepts only a 3.x protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["../../proto/api.proto", "../../proto/internal.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // `bytes::Bytes` for every bytes field: payloads move without copies.
    config.bytes(["."]);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &protos, &["../../proto"])?;
    Ok(())
}
