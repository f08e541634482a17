//! Rust types and tonic stubs generated from `proto/verify/v1`. Nothing hand-written lives
//! here but the stubs' codec ([`codec`]): the contract is the `.proto` file.

pub mod codec;

/// `verify.v1`: the VerifyService contract, and `verify.admin.v1`: the operators'
/// AdminService. One descriptor set holds both.
pub mod verify {
    pub mod v1 {
        #![allow(clippy::all, missing_debug_implementations)]
        tonic::include_proto!("verify.v1");

        /// The encoded descriptor set, for server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            tonic::include_file_descriptor_set!("verify_v1_descriptor");
    }

    pub mod admin {
        pub mod v1 {
            #![allow(clippy::all, missing_debug_implementations)]
            tonic::include_proto!("verify.admin.v1");
        }
    }
}
