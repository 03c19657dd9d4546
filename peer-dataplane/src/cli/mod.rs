//! The operator's commands. Each reads the pinned maps through [`crate::bpf`], names what
//! it finds through [`crate::views`], and prints through [`render`].

pub mod commands;
pub mod conntrack;
pub mod frame;
pub mod inspect;
pub mod loadgen;
pub mod render;
pub mod stats;
pub mod trace;
