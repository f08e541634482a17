//! Integration tests: the sandbox served on 127.0.0.1:0 and driven over HTTP, by reqwest
//! and by Twilio's official Python and Node helper libraries.

mod api;
mod inbox;
mod official;
mod scenarios;
mod support;
