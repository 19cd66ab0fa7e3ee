//! Test harness: starts the real `tidecast` binary and real clients (ffmpeg, ezstream,
//! liquidsoap) on loopback, and kills every process it started when a test ends, pass or fail.
//!
//! A tool that is missing makes the test fail loudly with the command that installs it
//! (`tests/run.sh` installs everything); nothing is skipped silently.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod audio;
mod certs;
mod clients;
mod cluster;
mod node;
mod process;
mod web;

// Each test uses some of these; one that uses none of a module's is no error.
#[allow(unused_imports)]
pub use audio::*;
#[allow(unused_imports)]
pub use certs::*;
#[allow(unused_imports)]
pub use clients::*;
#[allow(unused_imports)]
pub use cluster::*;
#[allow(unused_imports)]
pub use node::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use web::*;
