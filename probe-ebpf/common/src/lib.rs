#![no_std]
//! Types shared by the kernel programs and the agent (work in progress).
