//! Leader election: of several operator replicas only the holder of the `coordination.k8s.io/v1`
//! Lease [`LEASE_NAME`] (in the operator's namespace) reconciles and writes — policy status,
//! report status, events, NADs, the webhook certificate.
//!
//! The lock is [`kube_lease_manager`]: it takes a free or expired Lease with a server-side
//! apply of `holderIdentity` (two candidates racing for it conflict, one wins), renews it
//! `renew_before` ahead of expiry, and releases it when the [`Leadership`] steps down. A
//! candidate waits for the holder's `renewTime + leaseDurationSeconds` and then takes over, so a
//! crashed leader is replaced within one lease duration (plus up to a second of jitter). A
//! leader whose Lease request fails stops leading at once (see [`campaign`]).
//!
//! [`lead`] runs the leader's work only while leading: it returns when leadership is lost (the
//! caller exits, as client-go operators do, so the pod restarts as a fresh candidate and no
//! half-stopped task keeps writing) or when `shutdown` fires (SIGTERM: it stops the work and
//! releases the Lease so another replica takes over at once).

use std::future::Future;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerBuilder, LeaseParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The operator's Lease (created by the manifests; the operator only gets and patches it).
pub const LEASE_NAME: &str = "kubetune-operator";

/// Errors of the election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease API refused or failed.
    #[error("lease {LEASE_NAME}: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// The election task ended (panicked or was cancelled).
    #[error("leader election task ended: {0}")]
    Task(String),
    /// Invalid timings.
    #[error("lease renew-before ({renew_before:?}) must be at least 1 s and shorter than the lease duration ({duration:?})")]
    Timing {
        /// `--lease-duration`.
        duration: Duration,
        /// `--lease-renew-before`.
        renew_before: Duration,
    },
}

/// Who campaigns for which Lease, with which timings.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Lease name ([`LEASE_NAME`]).
    pub lease_name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a holder's lease is valid after each renewal (whole seconds).
    pub lease_duration: Duration,
    /// Renew this long before the lease would expire (whole seconds, < `lease_duration`).
    pub renew_before: Duration,
    /// After a failed Lease request: wait this long before campaigning again.
    pub retry: Duration,
}

/// A running campaign: whether this replica leads now, and the task that keeps the Lease.
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<(), kube_lease_manager::LeaseManagerError>>,
}

/// How [`lead`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Another replica holds the Lease now (or it could not be renewed in time).
    Lost,
    /// `shutdown` fired; the work was stopped and the Lease released.
    SteppedDown,
}

/// Starts campaigning for the Lease (which must exist).
pub async fn campaign(client: Client, cfg: &ElectionConfig) -> Result<Leadership, LeaderError> {
    let (duration, grace) = (cfg.lease_duration.as_secs(), cfg.renew_before.as_secs());
    if grace == 0 || grace >= duration {
        return Err(LeaderError::Timing {
            duration: cfg.lease_duration,
            renew_before: cfg.renew_before,
        });
    }
    let params = LeaseParams::new(cfg.identity.clone(), duration, grace)
        .with_field_manager(format!("kubetune-operator-{}", cfg.identity));
    let manager = LeaseManagerBuilder::new(client, &cfg.lease_name)
        .with_namespace(&cfg.namespace)
        .with_create_mode(LeaseCreateMode::UseExistent)
        .with_parameters(params)
        .build()
        .await?;
    let (tx, state) = watch::channel(false);
    let task = tokio::spawn(keep(manager, tx, cfg.retry));
    Ok(Leadership { state, task })
}

/// Keeps campaigning (and renewing while leading) and publishes whether this replica leads.
/// A failed Lease request ends the lead at once — a leader that cannot renew must not keep
/// writing while another replica may take over — and releases what it can; the campaign
/// resumes after `retry`. Closing the channel releases the Lease and ends the task.
async fn keep(
    manager: LeaseManager,
    tx: watch::Sender<bool>,
    retry: Duration,
) -> Result<(), kube_lease_manager::LeaseManagerError> {
    loop {
        tokio::select! {
            biased;
            _ = tx.closed() => return manager.release().await,
            r = manager.changed() => match r {
                Ok(leading) => {
                    tx.send_replace(leading);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease request failed: not leading until it succeeds again");
                    tx.send_replace(false);
                    if let Err(e) = manager.release().await {
                        tracing::debug!(error = %e, "releasing after the failure failed too");
                    }
                    tokio::select! {
                        _ = tx.closed() => return Ok(()),
                        _ = tokio::time::sleep(retry) => {}
                    }
                }
            }
        }
    }
}

impl Leadership {
    /// Whether this replica holds the Lease now.
    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    /// Waits until this replica leads (or the election task ends).
    pub async fn acquired(&mut self) -> Result<(), LeaderError> {
        self.wait_for(true).await
    }

    /// Waits until this replica no longer leads (or the election task ends).
    pub async fn lost(&mut self) -> Result<(), LeaderError> {
        self.wait_for(false).await
    }

    async fn wait_for(&mut self, leading: bool) -> Result<(), LeaderError> {
        self.state
            .wait_for(|l| *l == leading)
            .await
            .map(|_| ())
            .map_err(|_| LeaderError::Task("the lease manager stopped".into()))
    }

    /// Stops campaigning and releases the Lease if this replica holds it.
    pub async fn step_down(self) -> Result<(), LeaderError> {
        drop(self.state);
        match self.task.await {
            Ok(r) => r.map_err(LeaderError::from),
            Err(e) => Err(LeaderError::Task(e.to_string())),
        }
    }
}

/// Waits for leadership, then runs `work` until leadership is lost or `shutdown` fires
/// (stepping down then). `work` returning early ends the lead too (stepping down).
pub async fn lead<W, S>(
    mut leadership: Leadership,
    shutdown: S,
    work: W,
) -> Result<Ended, LeaderError>
where
    W: Future<Output = ()>,
    S: Future<Output = ()>,
{
    tokio::pin!(shutdown);
    tokio::select! {
        r = leadership.acquired() => r?,
        _ = &mut shutdown => {
            leadership.step_down().await?;
            return Ok(Ended::SteppedDown);
        }
    }
    tracing::info!("leading: this replica reconciles and writes");
    tokio::select! {
        r = leadership.lost() => {
            r?;
            tracing::warn!("lost the lease to another replica");
            Ok(Ended::Lost)
        }
        _ = &mut shutdown => {
            leadership.step_down().await?;
            tracing::info!("stepped down: lease released");
            Ok(Ended::SteppedDown)
        }
        _ = work => {
            leadership.step_down().await?;
            Ok(Ended::SteppedDown)
        }
    }
}

impl ElectionConfig {
    /// The election of the operator's command line.
    pub fn from_args(namespace: &str, a: &crate::cli::ElectionArgs) -> Self {
        Self {
            namespace: namespace.to_string(),
            lease_name: LEASE_NAME.to_string(),
            identity: a.leader_identity.clone(),
            lease_duration: Duration::from_secs(a.lease_duration_seconds),
            renew_before: Duration::from_secs(a.lease_renew_before_seconds),
            retry: Duration::from_secs(a.lease_retry_seconds),
        }
    }
}
