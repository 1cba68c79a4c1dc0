//! A reproducible OCI image layout of the filter, without Docker: the Wasm "compat"
//! image format Istio (`WasmPlugin.url: oci://…`) and Envoy Gateway
//! (`EnvoyExtensionPolicy` code type `Image`) pull.
//!
//! The compat format (solo-io/wasm `spec-compat.md`, implemented by Istio's
//! `pkg/wasm/imagefetcher.go` and reused by Envoy Gateway) is a standard image: one
//! `application/vnd.oci.image.layer.v1.tar+gzip` layer holding a single file,
//! `plugin.wasm`, and the manifest annotation `module.wasm.image/variant: compat`.
//!
//! Reproducible: the tar entry has a fixed mode, owner and mtime; gzip carries no
//! timestamp or file name; the config has no `created`; JSON is written with sorted
//! keys. The same wasm gives the same manifest digest on every machine with the same
//! `flate2` (the lockfile pins it).
//!
//! The layout (`oci-layout`, `index.json`, `blobs/sha256/…`) is what `skopeo copy
//! oci:DIR:TAG`, `oras cp --from-oci-layout DIR:TAG` and `crane push DIR` read.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use flate2::{Compression, GzBuilder};
use serde_json::{json, Value};

pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The one file of the layer, as Istio and Envoy Gateway look for it.
pub const PLUGIN_FILE: &str = "plugin.wasm";
/// The manifest annotation the compat spec asks of an OCI-media-type image.
pub const VARIANT_ANNOTATION: (&str, &str) = ("module.wasm.image/variant", "compat");
/// The annotation naming a manifest's tag in `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// What [`write_layout`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `sha256:<hex>` of the manifest: the image digest registries report, and (hex
    /// only) the `sha256` a WasmPlugin or EnvoyExtensionPolicy pins.
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub config_digest: String,
    pub layer_digest: String,
    /// `sha256:<hex>` of the uncompressed layer (the config's `rootfs.diff_ids`).
    pub diff_id: String,
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::sha256_hex(bytes))
}

/// The layer: a tar with `plugin.wasm` (mode 0644, owner 0:0, mtime 0), gzipped
/// without a timestamp. Returns (uncompressed tar, gzipped tar).
pub fn layer(wasm: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut header = tar::Header::new_ustar();
    header.set_path(PLUGIN_FILE).context("tar path")?;
    header.set_size(u64::try_from(wasm.len()).context("wasm size")?);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, wasm).context("writing the tar entry")?;
    let tar = builder.into_inner().context("finishing the tar")?;

    // GzBuilder writes no file name and the mtime given (0: none); OS 255: unknown.
    let mut gz = GzBuilder::new().mtime(0).operating_system(255).write(Vec::new(), Compression::best());
    gz.write_all(&tar).context("gzip")?;
    let gzipped = gz.finish().context("gzip")?;
    Ok((tar, gzipped))
}

/// Writes the image layout of `wasm` to `dir` (replaced if it exists), tagged `tag`.
pub fn write_layout(wasm: &[u8], dir: &Path, tag: &str, version: &str) -> Result<Image> {
    if wasm.get(..4) != Some(b"\0asm".as_slice()) {
        bail!("not a WebAssembly module (no \\0asm magic)");
    }
    if tag.is_empty() || !tag.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        bail!("{tag:?} is not a valid tag");
    }
    let (tar, gzipped) = layer(wasm)?;
    let diff_id = digest(&tar);
    let layer_digest = digest(&gzipped);

    let config = to_bytes(&json!({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    }))?;
    let config_digest = digest(&config);

    let manifest = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": LAYER_MEDIA_TYPE, "digest": layer_digest, "size": gzipped.len() }],
        "annotations": {
            VARIANT_ANNOTATION.0: VARIANT_ANNOTATION.1,
            "org.opencontainers.image.title": "nhi-guard",
            "org.opencontainers.image.description": "nhi-guard proxy-wasm filter (plugin.wasm)",
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.licenses": "Apache-2.0",
        },
    }))?;
    let manifest_digest = digest(&manifest);

    let index = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": { REF_NAME_ANNOTATION: tag },
        }],
    }))?;

    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    for (blob_digest, bytes) in
        [(&layer_digest, &gzipped), (&config_digest, &config), (&manifest_digest, &manifest)]
    {
        let hex = blob_digest.trim_start_matches("sha256:");
        fs::write(blobs.join(hex), bytes).with_context(|| format!("writing blob {hex}"))?;
    }
    fs::write(dir.join("oci-layout"), to_bytes(&json!({ "imageLayoutVersion": "1.0.0" }))?)
        .context("writing oci-layout")?;
    fs::write(dir.join("index.json"), index).context("writing index.json")?;

    Ok(Image {
        manifest_digest,
        manifest_size: u64::try_from(manifest.len()).unwrap_or(u64::MAX),
        config_digest,
        layer_digest,
        diff_id,
    })
}

/// Compact JSON; `serde_json`'s map keeps keys sorted, so the bytes are stable.
fn to_bytes(value: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(value).context("serialising JSON")
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    const FAKE_WASM: &[u8] = b"\0asm\x01\0\0\0 not really a module";

    #[test]
    fn the_layer_holds_exactly_plugin_wasm_with_fixed_metadata() {
        let (tar, gzipped) = layer(FAKE_WASM).unwrap();
        // gzip header: magic, deflate, no flags, mtime 0, OS 255.
        assert_eq!(&gzipped[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255]);
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(gzipped.as_slice()).read_to_end(&mut unzipped).unwrap();
        assert_eq!(unzipped, tar);
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some(PLUGIN_FILE));
        assert_eq!(entry.header().mode().unwrap(), 0o644);
        assert_eq!(entry.header().mtime().unwrap(), 0);
        assert_eq!((entry.header().uid().unwrap(), entry.header().gid().unwrap()), (0, 0));
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        assert_eq!(content, FAKE_WASM);
        assert!(entries.next().is_none(), "one entry only");
    }

    #[test]
    fn layouts_are_reproducible_and_refuse_non_wasm() {
        let base = std::env::temp_dir().join(format!("nhi-oci-unit-{}", std::process::id()));
        let a = write_layout(FAKE_WASM, &base.join("a"), "1.0", "1.0").unwrap();
        let b = write_layout(FAKE_WASM, &base.join("b"), "1.0", "1.0").unwrap();
        assert_eq!(a, b);
        let index: Value = serde_json::from_slice(&fs::read(base.join("a/index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["digest"], a.manifest_digest.as_str());
        assert!(write_layout(b"ELF", &base.join("c"), "1.0", "1.0").is_err());
        assert!(write_layout(FAKE_WASM, &base.join("c"), "a/b", "1.0").is_err());
        let _ = fs::remove_dir_all(base);
    }
}
