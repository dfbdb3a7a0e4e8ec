//! Webhook serving certificate (`--cert-mode self-signed`, the default).
//!
//! The operator keeps Secret `kubetune-webhook-tls` (`tls.crt`, `tls.key`, `ca.crt`) valid for
//! `kubetune-webhook.<ns>.svc` and the `caBundle` of the MutatingWebhookConfiguration
//! `kubetune-webhook` and the ValidatingWebhookConfiguration `kubetune-validate` equal to
//! `ca.crt`. The webhook pods mount the Secret and reload changed files themselves.
//!
//! Each (re)issue creates a fresh one-shot CA, signs the serving certificate with it and throws
//! the CA key away: no CA key is ever stored. To rotate without a window in which the apiserver
//! distrusts the webhook, `ca.crt` (and so the `caBundle`) holds the new CA *and* the previous
//! CAs that are still valid, and the `caBundle` is updated before the Secret.
//!
//! Pure parts (`generate`, `needs_rotation`, `secret_needs_rotation`, `merge_ca_bundle`) are
//! tested with short lifetimes; `sync` does the I/O.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::json;

/// Secret holding the webhook's serving certificate.
pub const SECRET_NAME: &str = "kubetune-webhook-tls";
/// Service name of the webhook.
pub const SERVICE_NAME: &str = "kubetune-webhook";
/// MutatingWebhookConfiguration name.
pub const MUTATING_NAME: &str = "kubetune-webhook";
/// ValidatingWebhookConfiguration name.
pub const VALIDATING_NAME: &str = "kubetune-validate";
/// Lifetime of issued certificates.
pub const LIFETIME: SignedDuration = SignedDuration::from_hours(365 * 24);
/// Renew this long before expiry.
pub const RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(30 * 24);

/// Certificate errors.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen failed.
    #[error("generating certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A timestamp is out of range.
    #[error("invalid certificate time: {0}")]
    Time(String),
    /// Kubernetes API error.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// PEM material for the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMaterial {
    /// `ca.crt`: the CA bundle (new CA first).
    pub ca_pem: String,
    /// `tls.crt`: the serving certificate.
    pub cert_pem: String,
    /// `tls.key`: its private key (PKCS#8).
    pub key_pem: String,
}

/// DNS names of the webhook Service in `namespace`.
pub fn service_dns_names(namespace: &str) -> Vec<String> {
    vec![
        format!("{SERVICE_NAME}.{namespace}.svc"),
        format!("{SERVICE_NAME}.{namespace}.svc.cluster.local"),
        format!("{SERVICE_NAME}.{namespace}"),
    ]
}

fn to_offset(t: Timestamp) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .map_err(|e| CertError::Time(e.to_string()))
}

/// Issue a fresh CA and a serving certificate for `dns_names`, valid from `now - 5 min` (clock
/// skew) to `now + lifetime`. The CA key is dropped.
pub fn generate(
    dns_names: &[String],
    now: Timestamp,
    lifetime: SignedDuration,
) -> Result<TlsMaterial, CertError> {
    let not_before = to_offset(now - SignedDuration::from_mins(5))?;
    let not_after = to_offset(now + lifetime)?;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("kubetune-webhook-ca-{}", now.as_second()),
    );
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(dns_names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        dns_names.first().cloned().unwrap_or_default(),
    );
    leaf.distinguished_name = dn;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Parsed facts of one PEM certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// `notAfter`.
    pub not_after: Timestamp,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// The PEM block.
    pub pem: String,
}

/// Parse every certificate in a PEM bundle (unparsable blocks are skipped).
pub fn parse_pem_bundle(pem: &str) -> Vec<CertInfo> {
    let mut out = Vec::new();
    for p in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).flatten() {
        let Ok(cert) = p.parse_x509() else { continue };
        let Ok(not_after) = Timestamp::from_second(cert.validity().not_after.timestamp()) else {
            continue;
        };
        let dns_names = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|g| match g {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&p.contents);
        let mut block = String::from("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            block.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            block.push('\n');
        }
        block.push_str("-----END CERTIFICATE-----\n");
        out.push(CertInfo {
            not_after,
            dns_names,
            pem: block,
        });
    }
    out
}

/// Does the (first) certificate in `cert_pem` expire within `renew_before` of `now`? Also true
/// when it cannot be parsed.
pub fn needs_rotation(cert_pem: &str, now: Timestamp, renew_before: SignedDuration) -> bool {
    match parse_pem_bundle(cert_pem).first() {
        None => true,
        Some(c) => c.not_after - renew_before <= now,
    }
}

/// Does the Secret's content need a new certificate: missing keys, unparsable or expiring
/// certificate, or a certificate that does not name `dns_name`?
pub fn secret_needs_rotation(
    data: Option<&BTreeMap<String, ByteString>>,
    dns_name: &str,
    now: Timestamp,
    renew_before: SignedDuration,
) -> bool {
    let Some(data) = data else { return true };
    let get = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|s| !s.trim().is_empty())
    };
    let (Some(cert), Some(_key), Some(ca)) = (get("tls.crt"), get("tls.key"), get("ca.crt")) else {
        return true;
    };
    if needs_rotation(&cert, now, renew_before) || parse_pem_bundle(&ca).is_empty() {
        return true;
    }
    !parse_pem_bundle(&cert)
        .first()
        .is_some_and(|c| c.dns_names.iter().any(|d| d == dns_name))
}

/// The CA bundle after a rotation: the new CA first, then the previous CAs still valid at `now`
/// (so certificates they signed stay trusted while the webhook pods reload), at most 3 in all.
pub fn merge_ca_bundle(new_ca_pem: &str, old_bundle: Option<&str>, now: Timestamp) -> String {
    let mut out: Vec<String> = parse_pem_bundle(new_ca_pem)
        .into_iter()
        .map(|c| c.pem)
        .collect();
    for c in old_bundle.map(parse_pem_bundle).unwrap_or_default() {
        if c.not_after > now && !out.contains(&c.pem) && out.len() < 3 {
            out.push(c.pem);
        }
    }
    out.concat()
}

/// Result of one [`sync`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncOutcome {
    /// A new certificate was issued.
    pub rotated: bool,
    /// Webhook configurations whose caBundle was patched.
    pub patched: Vec<String>,
}

fn secret_string(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// Ensure the Secret is valid and the webhook configurations trust it. Order on rotation:
/// caBundle (new + old CAs) first, then the Secret, so the apiserver trusts both the old and
/// the new serving certificate while the webhook pods reload.
pub async fn sync(
    client: &Client,
    namespace: &str,
    now: Timestamp,
) -> Result<SyncOutcome, CertError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let existing = secrets.get_opt(SECRET_NAME).await?;
    let dns = service_dns_names(namespace);
    let rotate = secret_needs_rotation(
        existing.as_ref().and_then(|s| s.data.as_ref()),
        &dns[0],
        now,
        RENEW_BEFORE,
    );
    let old_bundle = existing.as_ref().and_then(|s| secret_string(s, "ca.crt"));
    let mut out = SyncOutcome {
        rotated: false,
        patched: Vec::new(),
    };
    let bundle = if rotate {
        let m = generate(&dns, now, LIFETIME)?;
        let bundle = merge_ca_bundle(&m.ca_pem, old_bundle.as_deref(), now);
        out.patched = patch_ca_bundles(client, &bundle).await?;
        let data = BTreeMap::from([
            ("tls.crt".to_string(), ByteString(m.cert_pem.into_bytes())),
            ("tls.key".to_string(), ByteString(m.key_pem.into_bytes())),
            (
                "ca.crt".to_string(),
                ByteString(bundle.clone().into_bytes()),
            ),
        ]);
        if existing.is_some() {
            let patch = json!({"data": data});
            secrets
                .patch(SECRET_NAME, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        } else {
            let s = Secret {
                metadata: kube::core::ObjectMeta {
                    name: Some(SECRET_NAME.into()),
                    namespace: Some(namespace.into()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_string(),
                        "kubetune-operator".to_string(),
                    )])),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                data: Some(data),
                ..Default::default()
            };
            secrets.create(&PostParams::default(), &s).await?;
        }
        out.rotated = true;
        tracing::info!(
            secret = SECRET_NAME,
            "issued a new webhook serving certificate"
        );
        return Ok(out);
    } else {
        old_bundle.unwrap_or_default()
    };
    out.patched = patch_ca_bundles(client, &bundle).await?;
    Ok(out)
}

/// The self-signed certificate loop: [`sync`] now and then every `every`, forever (failures
/// are logged and retried at the next tick).
pub async fn run(client: Client, namespace: String, every: std::time::Duration) {
    loop {
        match sync(&client, &namespace, Timestamp::now()).await {
            Ok(o) if o.rotated || !o.patched.is_empty() => {
                tracing::info!(rotated = o.rotated, patched = ?o.patched, "webhook certificate synced")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "webhook certificate sync failed"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Patch the caBundle of both webhook configurations where it differs from `bundle`. A missing
/// configuration is skipped with a warning (the manifests may not be applied yet).
pub async fn patch_ca_bundles(client: &Client, bundle: &str) -> Result<Vec<String>, CertError> {
    let mut patched = Vec::new();
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let webhooks = |cfg: MutatingWebhookConfiguration| {
        let hooks = cfg.webhooks.unwrap_or_default().into_iter();
        hooks.map(|w| (w.name, w.client_config.ca_bundle)).collect()
    };
    if patch_one(&mutating, MUTATING_NAME, bundle, webhooks).await? {
        patched.push(MUTATING_NAME.to_string());
    }
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let webhooks = |cfg: ValidatingWebhookConfiguration| {
        let hooks = cfg.webhooks.unwrap_or_default().into_iter();
        hooks.map(|w| (w.name, w.client_config.ca_bundle)).collect()
    };
    if patch_one(&validating, VALIDATING_NAME, bundle, webhooks).await? {
        patched.push(VALIDATING_NAME.to_string());
    }
    Ok(patched)
}

/// Patch one webhook configuration's caBundles when any differs from `bundle`; true if patched.
async fn patch_one<K>(
    api: &Api<K>,
    name: &str,
    bundle: &str,
    webhooks: impl FnOnce(K) -> Vec<(String, Option<ByteString>)>,
) -> Result<bool, CertError>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let Some(cfg) = api.get_opt(name).await? else {
        tracing::warn!(name, "webhook configuration not found");
        return Ok(false);
    };
    let want = bundle.as_bytes();
    let names: Vec<(String, bool)> = webhooks(cfg)
        .into_iter()
        .map(|(n, b)| (n, b.is_some_and(|b| b.0 == want)))
        .collect();
    if names.iter().all(|(_, same)| *same) {
        return Ok(false);
    }
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Strategic(ca_patch(&names, bundle)),
    )
    .await?;
    Ok(true)
}

/// Strategic merge patch setting `clientConfig.caBundle` of every named webhook (the webhooks
/// list merges by `name`).
pub fn ca_patch(webhooks: &[(String, bool)], bundle: &str) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bundle.as_bytes());
    json!({
        "webhooks": webhooks
            .iter()
            .map(|(name, _)| json!({"name": name, "clientConfig": {"caBundle": b64}}))
            .collect::<Vec<_>>()
    })
}
