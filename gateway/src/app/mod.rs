//! The composition root: the config file's sections combined ([`config`]) and the state every
//! request shares, built once from them ([`state`]).

pub mod config;
pub mod state;
