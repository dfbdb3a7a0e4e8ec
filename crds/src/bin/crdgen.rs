//! Writes the CRDs to `config/crd/` (default) or prints them (`--stdout`).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--stdout") {
        for (_, crd) in kubetune_crds::schema::crds() {
            print!("---\n{}", kubetune_crds::schema::render(&crd));
        }
        return Ok(());
    }
    let dir = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/crd"));
    std::fs::create_dir_all(&dir)?;
    for (file, crd) in kubetune_crds::schema::crds() {
        let path = dir.join(file);
        std::fs::write(&path, kubetune_crds::schema::render(&crd))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
