//! `nhi-oci --wasm FILE --out DIR --tag TAG [--version V]`: writes the reproducible OCI
//! image layout of the filter (see `test_harness::oci`) and prints its digest and how
//! to push it. `make oci` runs it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use test_harness::oci;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("nhi-oci: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let (mut wasm, mut out, mut tag, mut version) = (None, None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--wasm" => wasm = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--tag" => tag = Some(value()?),
            "--version" => version = Some(value()?),
            "-h" | "--help" => {
                println!("usage: nhi-oci --wasm FILE --out DIR --tag TAG [--version V]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    let (Some(wasm), Some(out), Some(tag)) = (wasm, out, tag) else {
        bail!("usage: nhi-oci --wasm FILE --out DIR --tag TAG [--version V]");
    };
    let version = version.unwrap_or_else(|| tag.clone());
    let bytes = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let image = oci::write_layout(&bytes, &out, &tag, &version)?;
    let dir = out.display();
    println!("OCI image layout: {dir} (tag {tag})");
    println!("manifest digest:  {}", image.manifest_digest);
    println!("push it with one of:");
    println!("  skopeo copy oci:{dir}:{tag} docker://REGISTRY/nhi-guard:{tag}");
    println!("  oras cp --from-oci-layout {dir}:{tag} REGISTRY/nhi-guard:{tag}");
    println!("  crane push {dir} REGISTRY/nhi-guard:{tag}");
    Ok(())
}
