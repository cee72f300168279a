//! `exo cluster-key`: makes a cluster key, and where a node's key comes from (`--cluster-key`,
//! `EXO_CLUSTER_KEY`, or the file `exo cluster-key --write` keeps in `EXO_HOME`).

use anyhow::{Context, Result};
use clap::Args;
use exo_cluster::ClusterKey;

#[derive(Debug, Args)]
pub struct ClusterKeyArgs {
    /// Also keep the key in EXO_HOME (default ~/.exo/cluster_key, readable by you only), where a node started
    /// without --cluster-key finds it. Refuses to replace a kept key.
    #[arg(long)]
    pub write: bool,
}

pub fn cluster_key(args: ClusterKeyArgs) -> Result<()> {
    let key = ClusterKey::generate()?;
    if args.write {
        let path = key.write(&crate::models::home_dir("EXO_HOME", ".exo")?)?;
        eprintln!("kept in {}; give every node of the cluster the same key", path.display());
    }
    println!("{}", key.to_hex());
    Ok(())
}

/// The node's key: the flag's (or `EXO_CLUSTER_KEY`'s), else the kept one, else none (an open cluster).
pub fn node_key(flag: Option<&str>) -> Result<Option<ClusterKey>> {
    if let Some(text) = flag {
        return Ok(Some(ClusterKey::parse(text).context("--cluster-key")?));
    }
    Ok(ClusterKey::load(&crate::models::home_dir("EXO_HOME", ".exo")?)?)
}
