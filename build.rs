//! Embeds the web app (`web/dist`, built by `npm run build` in `web/`) into the `stoa` binary.
//!
//! Writes `$OUT_DIR/web_assets.rs`: a table of `(path, bytes)` with one `include_bytes!` per
//! file. Without `web/dist/index.html` the table holds only `src/web_fallback.html` as
//! `index.html`, a page that says how to build the app, so a plain `cargo build` still works.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let dist = root.join("web").join("dist");
    let mut files = Vec::new();
    let built = dist.join("index.html").is_file();
    if built {
        collect(&dist, &dist, &mut files);
        println!("cargo:rerun-if-changed=web/dist");
    } else {
        // Rebuilt once `web/dist` appears (a change inside `web/`).
        println!("cargo:rerun-if-changed=web");
        files.push((
            "index.html".to_owned(),
            root.join("src").join("web_fallback.html"),
        ));
    }
    println!("cargo:rerun-if-changed=src/web_fallback.html");
    files.sort();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "/// Whether the real app was built (else the fallback page)."
    );
    let _ = writeln!(out, "pub const BUILT: bool = {built};");
    let _ = writeln!(
        out,
        "/// Every embedded file, by path relative to the app's root."
    );
    let _ = writeln!(out, "pub static ASSETS: &[(&str, &[u8])] = &[");
    for (path, file) in &files {
        let _ = writeln!(
            out,
            "    ({path:?}, include_bytes!({:?})),",
            file.display().to_string()
        );
    }
    let _ = writeln!(out, "];");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    if let Err(err) = fs::write(out_dir.join("web_assets.rs"), out) {
        panic!("cannot write web_assets.rs: {err}");
    }
}

/// Every file under `dir`, as (path relative to `base` with `/` separators, absolute path).
fn collect(base: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(base, &path, files);
        } else if let Ok(relative) = path.strip_prefix(base) {
            let name = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            files.push((name, path));
        }
    }
}
