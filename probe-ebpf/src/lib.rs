#![no_std]
//! kubetune's kernel programs live in the `kubetune-probe` binary target (`src/main.rs`), built
//! for the BPF target by the agent's build script. This library target is empty; it exists so
//! the package is an ordinary workspace member.
