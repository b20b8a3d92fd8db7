//! The YAML inventory model and its validation (see the Provisioning issue); empty until then.
