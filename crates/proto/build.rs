//! Generates the gRPC code from `proto/` with the pure-Rust `protox` compiler, so no system
//! `protoc` is needed, and writes the descriptor set that server reflection serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut compiler = protox::Compiler::new(["../../proto"])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(["verify/v1/verify.proto", "verify/admin/v1/admin.proto"])?;
    std::fs::write(
        out_dir.join("verify_v1_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        // prost's codec, but a message that does not decode is the sender's error.
        .codec_path("crate::codec::ProtoCodec")
        .build_server(true)
        .build_client(true)
        .compile_fds(compiler.file_descriptor_set())?;
    println!("cargo:rerun-if-changed=../../proto");
    Ok(())
}
