//! What the masters support, read from INFO server, never assumed: Valkey 8 and later
//! answer `CLUSTER SLOT-STATS`, Valkey 9 and later move slots with `CLUSTER
//! MIGRATESLOTS`. A cluster of mixed versions uses what all its masters support.
//!
//! Owns: [`Capabilities`], `execution.migration` ([`MigrationMode`]) and the choice of
//! mover it makes. Does not own: the movers ([`super::legacy`], [`super::atomic`]).

use serde::{Deserialize, Serialize};

use super::RedisCluster;
use super::topology::{NodeInfo, Topology};
use crate::cluster::ClusterError;

/// What every master supports, read from INFO server by each snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// The lowest engine and version seen ("valkey 9.1.2"), "(mixed engines)" appended
    /// when the masters do not all run the same engine.
    pub engine: String,
    /// `CLUSTER SLOT-STATS` on every master (Valkey 8+): key counts in one call.
    pub slot_stats: bool,
    /// `CLUSTER MIGRATESLOTS` on every master (Valkey 9+).
    pub atomic_migration: bool,
}

impl Capabilities {
    /// What all of `masters` support; nothing when there are none.
    pub fn of<'a>(masters: impl IntoIterator<Item = &'a NodeInfo>) -> Capabilities {
        let infos: Vec<&NodeInfo> = masters.into_iter().collect();
        let all_valkey =
            |major: u32| !infos.is_empty() && infos.iter().all(|i| i.engine == "valkey" && i.version.0 >= major);
        let engine = match infos.iter().min_by_key(|i| (i.engine != "redis", i.version)) {
            None => String::new(),
            Some(low) if infos.iter().any(|i| i.engine != low.engine) => {
                format!("{} (mixed engines)", low.engine_version())
            }
            Some(low) => low.engine_version(),
        };
        Capabilities { engine, slot_stats: all_valkey(8), atomic_migration: all_valkey(9) }
    }
}

/// `execution.migration`: which protocol moves slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationMode {
    /// Atomic where every master supports it, legacy otherwise.
    #[default]
    Auto,
    /// Atomic, and an error on a cluster that does not support it.
    Atomic,
    /// SETSLOT + MIGRATE, slot by slot.
    Legacy,
}

impl MigrationMode {
    pub fn name(self) -> &'static str {
        match self {
            MigrationMode::Auto => "auto",
            MigrationMode::Atomic => "atomic",
            MigrationMode::Legacy => "legacy",
        }
    }

    /// The mover this mode picks on a cluster that supports `caps`.
    pub fn mover(self, caps: &Capabilities) -> Result<Mover, String> {
        match (self, caps.atomic_migration) {
            (MigrationMode::Legacy, _) | (MigrationMode::Auto, false) => Ok(Mover::Legacy),
            (_, true) => Ok(Mover::Atomic),
            (MigrationMode::Atomic, false) => Err(format!(
                "execution.migration = \"atomic\" needs Valkey 9 or later on every master; the masters run {}",
                if caps.engine.is_empty() { "an engine not yet seen" } else { &caps.engine }
            )),
        }
    }
}

/// The protocol that moves slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mover {
    Atomic,
    Legacy,
}

/// The capabilities the last snapshot saw, and the mover the run chose from them.
#[derive(Default)]
pub(super) struct Seen {
    caps: std::sync::Mutex<Option<Capabilities>>,
    chosen: std::sync::Mutex<Option<Mover>>,
}

impl RedisCluster {
    /// What the masters supported at the last snapshot; `None` before the first.
    pub fn capabilities(&self) -> Option<Capabilities> {
        self.caps.caps.lock().unwrap().clone()
    }

    pub(super) fn note_capabilities(&self, caps: Capabilities) {
        *self.caps.caps.lock().unwrap() = Some(caps);
    }

    /// The mover of this run: the one [`RedisCluster::choose_mover`] chose, else what
    /// `execution.migration` picks now (capabilities read when no snapshot was taken).
    pub async fn mover(&self) -> Result<Mover, ClusterError> {
        if let Some(m) = *self.caps.chosen.lock().unwrap() {
            return Ok(m);
        }
        let caps = self.current_capabilities(None).await?;
        self.migration.mover(&caps).map_err(ClusterError::Config)
    }

    /// The chosen mover, without I/O: what `groups_moves` answers by.
    pub(super) fn chosen_mover(&self) -> Option<Mover> {
        (*self.caps.chosen.lock().unwrap()).or_else(|| self.capabilities().and_then(|c| self.migration.mover(&c).ok()))
    }

    /// Chooses the mover of a run, once, before anything moves: every move of the run
    /// uses it. `atomic` where a master cannot do it is an error naming that master and
    /// its version. Returns the choice and why, for the plan's explanation and `/status`.
    pub async fn choose_mover(&self) -> Result<String, ClusterError> {
        let choice = self.describe_mover().await;
        *self.caps.chosen.lock().unwrap() = choice.as_ref().ok().map(|(m, _)| *m);
        choice.map(|(_, line)| line)
    }

    /// The mover `execution.migration` would choose now, and why, without choosing it
    /// (a dry run says it; the run in progress keeps its own).
    pub async fn describe_mover(&self) -> Result<(Mover, String), ClusterError> {
        let caps = self.current_capabilities(None).await?;
        let mode = self.migration.name();
        let chosen = match self.migration.mover(&caps) {
            Ok(m) => m,
            Err(e) => return Err(ClusterError::Config(self.lacking_atomic().await.unwrap_or(e))),
        };
        let line = match (chosen, self.migration) {
            (Mover::Atomic, _) => format!(
                "mover: atomic (CLUSTER MIGRATESLOTS; every master runs {} or later; execution.migration = {mode})",
                caps.engine
            ),
            (Mover::Legacy, MigrationMode::Legacy) => {
                "mover: legacy (SETSLOT and MIGRATE; execution.migration = legacy)".to_string()
            }
            (Mover::Legacy, _) => format!(
                "mover: legacy (SETSLOT and MIGRATE; {} has no atomic slot migration; execution.migration = {mode})",
                caps.engine
            ),
        };
        Ok((chosen, line))
    }

    /// The first master that cannot migrate atomically, with its version, in a sentence.
    async fn lacking_atomic(&self) -> Option<String> {
        let topo = self.nodes.topology().await.ok()?;
        for m in topo.masters.iter().filter(|m| !m.is_failed()) {
            let info = self.nodes.node_info(&m.addr).await.ok()?;
            if !Capabilities::of([&info]).atomic_migration {
                return Some(format!(
                    "execution.migration = \"atomic\" needs Valkey 9 or later on every master; {} runs {}",
                    m.addr,
                    info.engine_version()
                ));
            }
        }
        None
    }

    /// What the masters support: as the last snapshot saw it, else read now (of the
    /// masters of `topo`, when the caller has just read it).
    pub(super) async fn current_capabilities(&self, topo: Option<&Topology>) -> Result<Capabilities, ClusterError> {
        if let Some(c) = self.capabilities() {
            return Ok(c);
        }
        let read;
        let topo = match topo {
            Some(t) => t,
            None => {
                read = self.nodes.topology().await?;
                &read
            }
        };
        let infos = futures::future::join_all(topo.masters.iter().map(|m| self.nodes.node_info(&m.addr))).await;
        let infos: Vec<NodeInfo> = infos.into_iter().collect::<Result<_, _>>().map_err(ClusterError::Snapshot)?;
        let caps = Capabilities::of(&infos);
        self.note_capabilities(caps.clone());
        Ok(caps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(engine: &str, version: (u32, u32, u32)) -> NodeInfo {
        NodeInfo { engine: engine.into(), version, ..NodeInfo::default() }
    }

    #[test]
    fn a_cluster_supports_what_all_its_masters_support() {
        let v9 = node("valkey", (9, 1, 2));
        let v8 = node("valkey", (8, 1, 0));
        let r7 = node("redis", (7, 0, 15));
        let all9 = Capabilities::of([&v9, &v9]);
        assert_eq!(all9, Capabilities { engine: "valkey 9.1.2".into(), slot_stats: true, atomic_migration: true });
        let mixed = Capabilities::of([&v9, &v8]);
        assert_eq!((mixed.engine.as_str(), mixed.slot_stats, mixed.atomic_migration), ("valkey 8.1.0", true, false));
        let engines = Capabilities::of([&v9, &r7]);
        assert_eq!(engines.engine, "redis 7.0.15 (mixed engines)");
        assert!(!engines.slot_stats && !engines.atomic_migration);
        // Redis 8 has neither command under these names.
        assert!(!Capabilities::of([&node("redis", (8, 4, 0))]).slot_stats);
        assert_eq!(Capabilities::of([]), Capabilities::default());
    }

    #[test]
    fn the_mode_picks_the_mover_or_names_what_is_missing() {
        let v9 = Capabilities::of([&node("valkey", (9, 0, 0))]);
        let r7 = Capabilities::of([&node("redis", (7, 0, 15))]);
        assert_eq!(MigrationMode::Auto.mover(&v9), Ok(Mover::Atomic));
        assert_eq!(MigrationMode::Auto.mover(&r7), Ok(Mover::Legacy));
        assert_eq!(MigrationMode::Legacy.mover(&v9), Ok(Mover::Legacy));
        assert_eq!(MigrationMode::Atomic.mover(&v9), Ok(Mover::Atomic));
        let e = MigrationMode::Atomic.mover(&r7).unwrap_err();
        assert!(e.contains("execution.migration") && e.contains("redis 7.0.15"), "{e}");
        let parsed: MigrationMode = serde_json::from_str("\"legacy\"").unwrap();
        assert_eq!((parsed, MigrationMode::default().name()), (MigrationMode::Legacy, "auto"));
    }
}
