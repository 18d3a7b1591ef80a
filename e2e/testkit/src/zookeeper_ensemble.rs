//! A ZooKeeper ensemble of real servers (Debian's `zookeeper`, `QuorumPeerMain`) on loopback,
//! each with its own ports and data directory, for tests of what survives a member's loss:
//! find the leader (`srvr`), kill any member and start it again with its data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;

use crate::KitError;
use crate::zookeeper_server::{
    ServerOptions, four_letter, free_port, java_server, spawn_server, wait_until_ready,
};

/// One member: its id (`myid`), ports and directory.
struct Member {
    id: usize,
    dir: tempfile::TempDir,
    client_port: u16,
    process: Option<Child>,
}

impl Member {
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    fn launch(&mut self) -> Result<(), KitError> {
        let command = java_server(
            self.dir.path(),
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
        )?;
        self.process = Some(spawn_server(command, &self.log_path())?);
        Ok(())
    }

    fn kill(&mut self) -> Result<(), KitError> {
        if let Some(mut child) = self.process.take() {
            child.kill().ok();
            child.wait()?;
        }
        Ok(())
    }
}

pub struct ZooKeeperEnsemble {
    members: Vec<Member>,
}

impl ZooKeeperEnsemble {
    /// Starts `size` servers (3 for a quorum that survives one loss) and waits until every one
    /// serves, as leader or follower.
    pub fn start(size: usize) -> Result<Self, KitError> {
        Self::start_with(size, ServerOptions::default())
    }

    pub fn start_with(size: usize, options: ServerOptions) -> Result<Self, KitError> {
        let mut members = Vec::with_capacity(size);
        let mut peers = Vec::with_capacity(size);
        for id in 1..=size {
            let dir = tempfile::Builder::new()
                .prefix(&format!("lockkeeper-zk{id}-"))
                .tempdir()?;
            let (quorum, election) = (free_port()?, free_port()?);
            peers.push(format!("server.{id}=127.0.0.1:{quorum}:{election}"));
            members.push(Member {
                id,
                dir,
                client_port: free_port()?,
                process: None,
            });
        }
        for member in &members {
            write_member_config(member, &peers, &options)?;
        }
        let mut ensemble = ZooKeeperEnsemble { members };
        for member in &mut ensemble.members {
            member.launch()?;
        }
        for index in 0..size {
            ensemble.wait_serving(index)?;
        }
        Ok(ensemble)
    }

    /// Every member, `127.0.0.1:PORT,…`: clients move to another member when theirs goes.
    pub fn connect_string(&self) -> String {
        let members: Vec<String> = self
            .members
            .iter()
            .map(|member| member.address().to_string())
            .collect();
        members.join(",")
    }

    /// Each member's client port, in member order (for a proxy in front of each).
    pub fn client_ports(&self) -> Vec<u16> {
        self.members
            .iter()
            .map(|member| member.client_port)
            .collect()
    }

    /// The index of the member that leads now, if one does.
    pub fn leader(&self) -> Option<usize> {
        self.members
            .iter()
            .position(|member| mode_at(member.address()).as_deref() == Some("leader"))
    }

    /// Kills member `index` (SIGKILL); its data stays for [`ZooKeeperEnsemble::restart`].
    pub fn kill(&mut self, index: usize) -> Result<(), KitError> {
        self.members[index].kill()
    }

    /// Starts member `index` again with its data and waits until it serves.
    pub fn restart(&mut self, index: usize) -> Result<(), KitError> {
        self.members[index].kill()?;
        self.members[index].launch()?;
        self.wait_serving(index)
    }

    /// Waits until member `index` serves (it joined a quorum, as leader or follower).
    pub fn wait_serving(&mut self, index: usize) -> Result<(), KitError> {
        let member = &mut self.members[index];
        let log = member.log_path();
        let address = member.address();
        let serves = || matches!(mode_at(address).as_deref(), Some("leader" | "follower"));
        let child = member
            .process
            .as_mut()
            .ok_or_else(|| KitError::Missing(format!("member {} is not running", member.id)))?;
        wait_until_ready(child, &log, serves)
    }

    /// The log of member `index`.
    pub fn log_path(&self, index: usize) -> PathBuf {
        self.members[index].log_path()
    }
}

impl Drop for ZooKeeperEnsemble {
    fn drop(&mut self) {
        for member in &mut self.members {
            let _ = member.kill();
        }
    }
}

/// The `Mode:` of the server at `address` from `srvr` (`leader`, `follower`), once it serves.
fn mode_at(address: SocketAddr) -> Option<String> {
    let answer = four_letter(address, "srvr").ok()?;
    answer
        .lines()
        .find_map(|line| line.strip_prefix("Mode: "))
        .map(str::to_string)
}

/// Writes a member's `zoo.cfg` (the standalone settings, plus every peer) and `data/myid`.
fn write_member_config(
    member: &Member,
    peers: &[String],
    options: &ServerOptions,
) -> Result<(), KitError> {
    let dir: &Path = member.dir.path();
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("myid"), member.id.to_string())?;
    let config = format!(
        "tickTime={}\ninitLimit=50\nsyncLimit=20\ndataDir={}\nclientPort={}\n\
         clientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=*\n\
         minSessionTimeout={}\nmaxSessionTimeout={}\nmaxClientCnxns=0\n\
         reconfigEnabled=false\nstandaloneEnabled=false\n{}\n",
        options.tick.as_millis(),
        data.display(),
        member.client_port,
        options.min_session_timeout.as_millis(),
        options.max_session_timeout.as_millis(),
        peers.join("\n"),
    );
    std::fs::write(dir.join("zoo.cfg"), config)?;
    Ok(())
}
