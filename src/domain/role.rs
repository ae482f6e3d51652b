//! A member's role in a team (SPEC "Teams"): what they may do there.

use std::{fmt, str::FromStr};

/// `owner`, `admin` or `member`, as stored in `memberships.role`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, billing included.
    Owner,
    /// Invitations and members, not billing.
    Admin,
    /// Uses the product.
    Member,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a role is owner, admin or member")]
pub struct UnknownRole;

impl Role {
    pub const ALL: [Self; 3] = [Self::Owner, Self::Admin, Self::Member];

    pub fn parse(raw: &str) -> Result<Self, UnknownRole> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == raw)
            .ok_or(UnknownRole)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }

    /// How pages name it.
    pub const fn in_words(self) -> &'static str {
        match self {
            Self::Owner => "Owner",
            Self::Admin => "Admin",
            Self::Member => "Member",
        }
    }

    /// Checkout and the customer portal are the owner's.
    pub const fn may_manage_billing(self) -> bool {
        matches!(self, Self::Owner)
    }

    /// Sees pending invitations and the audit log; resends and revokes invitations.
    pub const fn may_manage_invitations(self) -> bool {
        matches!(self, Self::Owner | Self::Admin)
    }

    /// Invites someone as `role`: an admin invites members and admins, only an owner invites
    /// owners.
    pub const fn may_invite(self, role: Role) -> bool {
        match self {
            Self::Owner => true,
            Self::Admin => !matches!(role, Self::Owner),
            Self::Member => false,
        }
    }

    /// Changes a member's role from `from` to `to`: an owner any role (other owners' too), an
    /// admin between member and admin.
    pub const fn may_change_role(self, from: Role, to: Role) -> bool {
        self.may_invite(from) && self.may_invite(to)
    }

    /// Removes a member whose role is `theirs`: an owner anyone, an admin members and admins.
    pub const fn may_remove(self, theirs: Role) -> bool {
        self.may_invite(theirs)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(raw: &str) -> Result<Self, UnknownRole> {
        Self::parse(raw)
    }
}

super::text_column!(Role);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_nothing_else_is_one() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Ok(role));
        }
        for bad in ["", "Owner", "owner ", "root", "members"] {
            assert_eq!(Role::parse(bad), Err(UnknownRole), "{bad:?}");
        }
    }

    #[test]
    fn only_the_owner_manages_billing() {
        assert!(Role::Owner.may_manage_billing());
        assert!(!Role::Admin.may_manage_billing());
        assert!(!Role::Member.may_manage_billing());
        assert_eq!(Role::Admin.in_words(), "Admin");
    }

    /// SPEC's role table, written out: what each role may do to each other role.
    #[test]
    fn the_role_table() {
        use Role::{Admin, Member, Owner};
        for (actor, invites, manages_invitations) in [
            (Owner, &[Owner, Admin, Member][..], true),
            (Admin, &[Admin, Member][..], true),
            (Member, &[][..], false),
        ] {
            assert_eq!(actor.may_manage_invitations(), manages_invitations, "{actor}");
            for target in Role::ALL {
                let allowed = invites.contains(&target);
                assert_eq!(actor.may_invite(target), allowed, "{actor} invites {target}");
                assert_eq!(actor.may_remove(target), allowed, "{actor} removes {target}");
                for to in Role::ALL {
                    let allowed = allowed && invites.contains(&to);
                    assert_eq!(
                        actor.may_change_role(target, to),
                        allowed,
                        "{actor}: {target} → {to}"
                    );
                }
            }
        }
    }
}
