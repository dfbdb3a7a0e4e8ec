//! Kernel struct and tracepoint field offsets for the kernel programs (no CO-RE in Rust eBPF).
//!
//! Struct fields come from `/sys/kernel/btf/vmlinux` (anonymous structs/unions are searched
//! recursively, so `sock.__sk_common.skc_num` resolves through the port-pair union); tracepoint
//! fields from tracefs `events/<category>/<name>/format`; the drop reason's numeric value from
//! BTF `enum skb_drop_reason`.

use std::path::{Path, PathBuf};

use btf_rs::{Btf, Type};
use kubetune_probe_common::Offsets;

/// Errors computing offsets.
#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    /// Kernel BTF unreadable.
    #[error("kernel BTF {path}: {msg}")]
    Btf {
        /// Path tried.
        path: String,
        /// What went wrong.
        msg: String,
    },
    /// A struct or field is missing from this kernel's BTF.
    #[error("BTF has no {0}")]
    Missing(String),
    /// A tracepoint format file is missing or lacks a field.
    #[error("tracepoint {0}: {1}")]
    Tracepoint(String, String),
}

/// Where tracefs is mounted (`/sys/kernel/tracing`, else `/sys/kernel/debug/tracing`).
pub fn tracefs_root() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Reads the byte offset of `field` from a tracepoint `format` file.
pub fn tracepoint_field(
    root: &Path,
    category: &str,
    name: &str,
    field: &str,
) -> Result<u32, OffsetError> {
    let tp = format!("{category}:{name}");
    let path = root.join("events").join(category).join(name).join("format");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| OffsetError::Tracepoint(tp.clone(), format!("{}: {e}", path.display())))?;
    parse_format_offset(&text, field)
        .ok_or_else(|| OffsetError::Tracepoint(tp, format!("no field {field}")))
}

/// Parses `field:<decl>; offset:<n>;` lines of a tracefs format file.
pub fn parse_format_offset(text: &str, field: &str) -> Option<u32> {
    for line in text.lines() {
        let line = line.trim();
        let Some(decl) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = decl.split(';');
        let decl = parts.next()?.trim();
        // Last identifier of the declaration, minus any array suffix.
        let ident = decl
            .rsplit([' ', '*'])
            .next()
            .unwrap_or("")
            .split('[')
            .next()
            .unwrap_or("");
        if ident != field {
            continue;
        }
        for p in parts {
            if let Some(v) = p.trim().strip_prefix("offset:") {
                return v.trim().parse().ok();
            }
        }
    }
    None
}

/// Kernel BTF loaded once.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    /// Loads `/sys/kernel/btf/vmlinux`.
    pub fn load() -> Result<Self, OffsetError> {
        let path = "/sys/kernel/btf/vmlinux";
        // Mmap backend: parse lazily, keep the agent's footprint small.
        let btf = Btf::from_file_with_backend(path, btf_rs::Backend::Mmap).map_err(|e| {
            OffsetError::Btf {
                path: path.into(),
                msg: e.to_string(),
            }
        })?;
        Ok(Self { btf })
    }

    fn strip(&self, mut t: Type) -> Type {
        for _ in 0..16 {
            match &t {
                Type::Typedef(_)
                | Type::Const(_)
                | Type::Volatile(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    match t
                        .as_btf_type()
                        .and_then(|bt| self.btf.resolve_chained_type(bt).ok())
                    {
                        Some(n) => t = n,
                        None => return t,
                    }
                }
                _ => return t,
            }
        }
        t
    }

    fn struct_by_name(&self, name: &str) -> Result<Type, OffsetError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| OffsetError::Missing(format!("struct {name}")))?;
        types
            .into_iter()
            .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
            .ok_or_else(|| OffsetError::Missing(format!("struct {name}")))
    }

    /// Finds `name` among the members of `t` (recursing into anonymous members). Returns the
    /// bit offset and the member's (stripped) type.
    fn find_member(&self, t: &Type, name: &str, depth: u32) -> Option<(u32, Type)> {
        if depth > 8 {
            return None;
        }
        let s = match t {
            Type::Struct(s) | Type::Union(s) => s,
            _ => return None,
        };
        for m in &s.members {
            let mname = self.btf.resolve_name(m).unwrap_or_default();
            let mtype = self.btf.resolve_chained_type(m).ok().map(|t| self.strip(t));
            if mname == name {
                return mtype.map(|ty| (m.bit_offset(), ty));
            }
            if mname.is_empty() {
                if let Some(inner) = &mtype {
                    if let Some((off, ty)) = self.find_member(inner, name, depth + 1) {
                        return Some((m.bit_offset() + off, ty));
                    }
                }
            }
        }
        None
    }

    /// Byte offset of the dotted `path` inside `struct root`.
    pub fn offset(&self, root: &str, path: &str) -> Result<u32, OffsetError> {
        let mut t = self.struct_by_name(root)?;
        let mut bits = 0u32;
        for field in path.split('.') {
            let (off, ty) = self
                .find_member(&t, field, 0)
                .ok_or_else(|| OffsetError::Missing(format!("{root}.{path} (at {field})")))?;
            bits += off;
            t = ty;
        }
        if !bits.is_multiple_of(8) {
            return Err(OffsetError::Missing(format!("{root}.{path} is a bitfield")));
        }
        Ok(bits / 8)
    }

    /// Value of enumerator `name` in `enum enum_name`.
    pub fn enum_value(&self, enum_name: &str, name: &str) -> Result<u32, OffsetError> {
        let types = self
            .btf
            .resolve_types_by_name(enum_name)
            .map_err(|_| OffsetError::Missing(format!("enum {enum_name}")))?;
        for t in types {
            match t {
                Type::Enum(e) => {
                    for m in &e.members {
                        if self.btf.resolve_name(m).ok().as_deref() == Some(name) {
                            return Ok(m.val());
                        }
                    }
                }
                Type::Enum64(e) => {
                    for m in &e.members {
                        if self.btf.resolve_name(m).ok().as_deref() == Some(name) {
                            return Ok(m.val() as u32);
                        }
                    }
                }
                _ => {}
            }
        }
        Err(OffsetError::Missing(format!("{enum_name}::{name}")))
    }

    /// Number of arguments of the BTF tracepoint `name` (from `typedef btf_trace_<name>`:
    /// a pointer to a func proto whose first argument is the `void *` context).
    pub fn btf_tracepoint_args(&self, name: &str) -> Result<usize, OffsetError> {
        let tname = format!("btf_trace_{name}");
        let types = self
            .btf
            .resolve_types_by_name(&tname)
            .map_err(|_| OffsetError::Missing(tname.clone()))?;
        for t in types {
            let mut cur = t;
            for _ in 0..4 {
                cur = match &cur {
                    Type::FuncProto(fp) => return Ok(fp.parameters.len().saturating_sub(1)),
                    other => match other
                        .as_btf_type()
                        .and_then(|bt| self.btf.resolve_chained_type(bt).ok())
                    {
                        Some(n) => n,
                        None => break,
                    },
                };
            }
        }
        Err(OffsetError::Missing(tname))
    }
}

/// Computes every offset the kernel programs need. `tracefs` is the tracefs root.
pub fn compute(btf: &KernelBtf, tracefs: &Path) -> Result<Offsets, OffsetError> {
    Ok(Offsets {
        task_files: btf.offset("task_struct", "files")?,
        files_fdt: btf.offset("files_struct", "fdt")?,
        fdtable_fd: btf.offset("fdtable", "fd")?,
        fdtable_max_fds: btf.offset("fdtable", "max_fds")?,
        file_private_data: btf.offset("file", "private_data")?,
        socket_sk: btf.offset("socket", "sk")?,
        socket_state: btf.offset("socket", "state")?,
        socket_type: btf.offset("socket", "type")?,
        sk_family: btf.offset("sock", "__sk_common.skc_family")?,
        sk_num: btf.offset("sock", "__sk_common.skc_num")?,
        sk_rcv_saddr: btf.offset("sock", "__sk_common.skc_rcv_saddr")?,
        sk_v6_rcv_saddr: btf.offset("sock", "__sk_common.skc_v6_rcv_saddr")?,
        sk_net: btf.offset("sock", "__sk_common.skc_net")?,
        sk_max_ack_backlog: btf.offset("sock", "sk_max_ack_backlog")?,
        sk_ack_backlog: btf.offset("sock", "sk_ack_backlog")?,
        net_inum: btf.offset("net", "ns.inum")?,
        net_cookie: btf.offset("net", "net_cookie")?,
        net_somaxconn: btf.offset("net", "core.sysctl_somaxconn")?,
        tp_enter_listen_fd: tracepoint_field(tracefs, "syscalls", "sys_enter_listen", "fd")?,
        tp_enter_listen_backlog: tracepoint_field(
            tracefs,
            "syscalls",
            "sys_enter_listen",
            "backlog",
        )?,
        listen_overflow_reason: btf
            .enum_value("skb_drop_reason", "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW")?,
        valid: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: sys_enter_listen\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:int backlog;\toffset:24;\tsize:8;\tsigned:0;\n\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;\n";

    #[test]
    fn format_offsets() {
        assert_eq!(parse_format_offset(FORMAT, "fd"), Some(16));
        assert_eq!(parse_format_offset(FORMAT, "backlog"), Some(24));
        assert_eq!(parse_format_offset(FORMAT, "skaddr"), Some(8));
        assert_eq!(parse_format_offset(FORMAT, "saddr"), Some(32));
        assert_eq!(parse_format_offset(FORMAT, "nope"), None);
    }

    #[test]
    fn kernel_btf_offsets_when_available() {
        let btf_file = Path::new("/sys/kernel/btf/vmlinux").exists();
        if !kubetune_test_support::test_env::require(
            "kernel BTF (/sys/kernel/btf/vmlinux)",
            btf_file,
        ) {
            return;
        }
        let btf = KernelBtf::load().unwrap();
        // sock_common starts struct sock; skc_family follows the addr/hash/port unions.
        assert_eq!(btf.offset("sock", "__sk_common").unwrap(), 0);
        let fam = btf.offset("sock", "__sk_common.skc_family").unwrap();
        let num = btf.offset("sock", "__sk_common.skc_num").unwrap();
        assert!(num < fam, "skc_num {num} skc_family {fam}");
        assert!(btf.offset("sock", "sk_max_ack_backlog").unwrap() > 0);
        assert!(
            btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW")
                .unwrap()
                > 0
        );
        assert!(btf.btf_tracepoint_args("kfree_skb").unwrap() >= 3);
    }
}
