//! Forming a cluster, one named step at a time: spawn the servers, read their ids, meet,
//! assign slots, attach replicas, wait until every node agrees, create the ACL user.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{ClusterSpec, LocalCluster, Node};
use crate::Result;
use crate::ports::free_port;
use crate::proc::Proc;
use crate::tls::TlsFiles;

pub(super) async fn form(spec: ClusterSpec, dir: &Path) -> Result<LocalCluster> {
    if spec.loaded == 0 {
        return Err("a cluster needs at least one master holding slots".into());
    }
    let binary = spec.engine.server_binary()?;
    let masters = spec.loaded + spec.empty;
    let tls = if spec.tls { Some(TlsFiles::generate(dir)?) } else { None };
    let nodes = spawn_nodes(&binary, dir, &spec, tls.as_ref())?;
    let mut c = LocalCluster {
        dir: dir.to_path_buf(),
        _tmp: None,
        nodes,
        masters: (0..masters).collect(),
        password: spec.password,
        user: spec.user,
        tls,
        engine: spec.engine,
    };
    c.read_ids().await?;
    // Meet, then slots, then replicas once every node knows every other.
    c.meet().await?;
    c.assign_slots(spec.loaded).await?;
    c.wait_known(c.nodes.len()).await?;
    c.replicate().await?;
    c.wait_ok(Duration::from_secs(30)).await?;
    c.wait_roles(masters).await?;
    c.wait_synced().await?;
    c.create_user().await?;
    Ok(c)
}

/// Starts every server: masters first, then replicas (replica `i` follows master
/// `i % masters`).
fn spawn_nodes(binary: &Path, dir: &Path, spec: &ClusterSpec, tls: Option<&TlsFiles>) -> Result<Vec<Node>> {
    let masters = spec.loaded + spec.empty;
    let mut nodes = Vec::new();
    for i in 0..masters * (1 + spec.replicas) {
        let port = free_port();
        let d = dir.join(format!("node-{port}"));
        let proc = spawn_node(binary, port, &d, spec.password.as_deref(), tls, spec.engine)?;
        nodes.push(Node {
            port,
            proc: Some(proc),
            id: String::new(),
            replica_of: (i >= masters).then(|| (i - masters) % masters),
            dir: d,
        });
    }
    Ok(nodes)
}

/// Starts one server on `port` with its files in `dir` (created if need be).
pub(super) fn spawn_node(
    binary: &Path,
    port: u16,
    dir: &Path,
    password: Option<&str>,
    tls: Option<&TlsFiles>,
    engine: crate::Engine,
) -> Result<Proc> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let child = Command::new(binary)
        .args(server_args(port, dir, password, tls))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    Ok(Proc::new(child, format!("{engine}-{port}")))
}

/// The command line of one node; the same for Redis 7 and Valkey 9. With TLS the node
/// has no plaintext port: `port` is its TLS port.
fn server_args(port: u16, dir: &Path, password: Option<&str>, tls: Option<&TlsFiles>) -> Vec<OsString> {
    let mut args: Vec<OsString> = match tls {
        Some(t) => t.server_args(port),
        None => vec!["--port".into(), port.to_string().into()],
    };
    args.extend(
        [
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "3000",
            // An emptied master stays a master (it would otherwise become a replica).
            "--cluster-allow-replica-migration",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            // A replica syncs at once: a failover right after forming must not find it empty.
            "--repl-diskless-sync-delay",
            "0",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--logfile",
            "server.log",
        ]
        .iter()
        .map(OsString::from),
    );
    args.extend(["--dir".into(), dir.as_os_str().to_owned()]);
    if let Some(pw) = password {
        args.extend(["--requirepass", pw, "--masterauth", pw].map(OsString::from));
    }
    args
}

impl LocalCluster {
    /// Waits for each node to answer and records its id (10 s at most per node).
    async fn read_ids(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.nodes[i].id = self.my_id(&self.nodes[i].addr()).await?;
        }
        Ok(())
    }

    /// The id of the node at `addr`, once it answers (10 s at most).
    pub(super) async fn my_id(&self, addr: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.text(addr, &["CLUSTER", "MYID"]).await {
                Ok(id) => return Ok(id),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Every node meets the first one; gossip does the rest.
    async fn meet(&self) -> Result<()> {
        let first = self.nodes[0].port.to_string();
        for n in &self.nodes[1..] {
            self.ok(&n.addr(), &["CLUSTER", "MEET", "127.0.0.1", &first]).await?;
        }
        Ok(())
    }

    /// The first `loaded` masters take an even share of the slots each.
    async fn assign_slots(&self, loaded: usize) -> Result<()> {
        for m in 0..loaded {
            let lo = (m * 16384 / loaded).to_string();
            let hi = ((m + 1) * 16384 / loaded - 1).to_string();
            self.ok(&self.nodes[m].addr(), &["CLUSTER", "ADDSLOTSRANGE", &lo, &hi]).await?;
        }
        Ok(())
    }

    async fn replicate(&self) -> Result<()> {
        for n in &self.nodes {
            if let Some(m) = n.replica_of {
                self.ok(&n.addr(), &["CLUSTER", "REPLICATE", &self.nodes[m].id]).await?;
            }
        }
        Ok(())
    }

    /// `ACL SETUSER` on every node: users are not replicated nor gossiped.
    async fn create_user(&self) -> Result<()> {
        for n in &self.nodes {
            self.create_user_on(&n.addr()).await?;
        }
        Ok(())
    }

    /// `ACL SETUSER` on one node (a node that started again has lost its users).
    pub(super) async fn create_user_on(&self, addr: &str) -> Result<()> {
        let Some(u) = &self.user else { return Ok(()) };
        let password = format!(">{}", u.password);
        let mut command = vec!["ACL", "SETUSER", &u.name, "reset", "on", &password];
        let rules = acl_args(&u.rules);
        command.extend(rules.iter().map(String::as_str));
        self.ok(addr, &command).await
    }

    /// Sends a command that answers OK.
    pub(super) async fn ok(&self, addr: &str, command: &[&str]) -> Result<()> {
        let mut con = self.conn(addr).await?;
        let mut c = redis::cmd(command[0]);
        for a in &command[1..] {
            c.arg(*a);
        }
        // Only the command's name in errors: the arguments may hold a password.
        let name = command[..command.len().min(2)].join(" ");
        c.query_async::<()>(&mut con).await.map_err(|e| format!("{addr}: {name}: {e}"))
    }
}

/// ACL rules as ACL SETUSER takes them: one argument per rule, a selector `(...)` whole.
fn acl_args(rules: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut open = false;
    for token in rules.split_whitespace() {
        match out.last_mut() {
            Some(last) if open => {
                last.push(' ');
                last.push_str(token);
            }
            _ => out.push(token.to_string()),
        }
        open = (open || token.starts_with('(')) && !token.ends_with(')');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_selector_is_one_argument() {
        assert_eq!(super::acl_args("~* +ping (~k:* +set +del) +info"), ["~*", "+ping", "(~k:* +set +del)", "+info"]);
    }
}
