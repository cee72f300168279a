//! Compiles `proto/exo.proto` with the protoc that `protoc-bin-vendored` ships: nothing to install by hand.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=../../proto/exo.proto");
    tonic_prost_build::configure()
        .bytes(".exo.v1.Activation.hidden")
        .compile_protos(&["../../proto/exo.proto"], &["../../proto"])?;
    Ok(())
}
