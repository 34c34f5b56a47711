//! Generates the server side of containerd's snapshots service
//! (`proto/`, see proto/README.md) for `src/snapshotter`. The messages are
//! `containerd-client`'s own types, so only the service trait is emitted.

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_arg("--experimental_allow_proto3_optional");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(
            ".containerd.services.snapshots.v1",
            "::containerd_client::services::v1::snapshots",
        )
        .extern_path(".containerd.types", "::containerd_client::types")
        .compile_with_config(
            config,
            &["proto/github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto"],
            &["proto"],
        )
        .expect(
            "generating the snapshots service (needs protoc: apt-get install protobuf-compiler)",
        );
}
