//! Plan and apply agent installs over SSH (see the Provisioning issue); empty until then.
