//! Compiles `proto/**/*.proto` with protox (pure Rust), so that building gse
//! needs no system `protoc`.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        root.join("gse/link/v1/link.proto"),
        root.join("gse/link/v1/task.proto"),
        root.join("gse/link/v1/file.proto"),
        root.join("gse/link/v1/data.proto"),
        root.join("gse/link/v1/proc.proto"),
        root.join("gse/link/v1/message.proto"),
        root.join("gse/link/v1/node.proto"),
        root.join("gse/link/v1/proxy.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    prost_build::Config::new()
        // Record payloads stay slices of the frame body when decoded (no
        // copy per record on the DataServer).
        // An agent's frame relayed by a proxy stays the frame's bytes.
        .bytes([
            ".gse.link.v1.DataRecord.payload",
            ".gse.link.v1.ProxyData.body",
            // A piece a proxy caches and serves (F8) is not copied.
            ".gse.link.v1.PieceData.data",
        ])
        .compile_fds(fds)?;
    Ok(())
}
