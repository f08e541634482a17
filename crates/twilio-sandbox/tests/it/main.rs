//! Integration tests: the sandbox served on 127.0.0.1:0 and driven over HTTP, by reqwest
//! and by Twilio's official Python and Node helper libraries, with a real HTTP receiver
//! for the Verify Events it posts.

mod api;
mod attempts;
mod events;
mod inbox;
mod official;
mod receiver;
mod scenarios;
mod slow_clients;
mod support;
