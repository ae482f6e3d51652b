//! Domain values with no I/O: input is parsed into these at the edge, so invalid data never
//! travels further in.

/// Lets a domain type be read from and bound to a PostgreSQL `text` column (`FromStr` and
/// `as_str`), so queries name it (`m.role AS "role: Role"`) instead of passing strings on.
macro_rules! text_column {
    ($type:ty) => {
        impl sqlx::Type<sqlx::Postgres> for $type {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $type {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $type {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Ok(text.parse::<$type>()?)
            }
        }
    };
}
pub(crate) use text_column;

mod account;
mod plan;
mod role;
mod subscription_status;
mod team;

pub use account::{EmailAddress, InvalidEmail, NewPassword, WeakPassword};
pub use plan::PlanName;
pub use role::{Role, UnknownRole};
pub use subscription_status::SubscriptionStatus;
pub use team::TeamName;
