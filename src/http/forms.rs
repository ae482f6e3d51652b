//! The form kit every form handler shares: [`FormErrors`] (a message per field, and one about
//! the form as a whole) and [`render_rejected`], which shows the form again with 422. The
//! templates' side is `templates/partials/form.html` (the CSRF input, a field with its label
//! and error).

use askama::Template;
use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};

use super::render;
use crate::error::Result;

/// Why a form was not accepted: messages by field name (as in the form), and one about the
/// form as a whole (wrong credentials, say). Templates ask `errors.get("email")`.
#[derive(Debug, Default)]
pub struct FormErrors {
    fields: Vec<(&'static str, String)>,
    form: Option<String>,
}

impl FormErrors {
    pub fn new() -> Self {
        Self::default()
    }

    /// A message about `field` (the first one given is kept).
    pub fn add(&mut self, field: &'static str, message: impl Into<String>) {
        if self.get(field).is_none() {
            self.fields.push((field, message.into()));
        }
    }

    /// The same, by value: `FormErrors::new().with("email", problem.to_string())`.
    pub fn with(mut self, field: &'static str, message: impl Into<String>) -> Self {
        self.add(field, message);
        self
    }

    /// A message about the whole form.
    pub fn set_form(&mut self, message: impl Into<String>) {
        self.form = Some(message.into());
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(name, _)| *name == field)
            .map(|(_, message)| message.as_str())
    }

    pub fn form(&self) -> Option<&str> {
        self.form.as_deref()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.form.is_none()
    }
}

/// A form shown again because it was not accepted: 422 (SPEC), with the page's messages.
pub fn render_rejected(page: &impl Template) -> Result<Response> {
    render_with_status(StatusCode::UNPROCESSABLE_ENTITY, page)
}

/// A page with another status than 200 (a lockout's 429, a used link's 410).
pub fn render_with_status(status: StatusCode, page: &impl Template) -> Result<Response> {
    Ok((status, render(page)?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_found_by_field_and_the_first_one_stays() {
        let mut errors = FormErrors::new().with("email", "Enter your email.");
        assert!(!errors.is_empty());
        errors.add("email", "a second message");
        errors.add("password", "Too short.");
        assert_eq!(errors.get("email"), Some("Enter your email."));
        assert_eq!(errors.get("password"), Some("Too short."));
        assert_eq!(errors.get("next"), None);
        assert_eq!(errors.form(), None);
        errors.set_form("The email or password is not right.");
        assert_eq!(errors.form(), Some("The email or password is not right."));
        assert!(FormErrors::new().is_empty());
    }

    #[derive(Template)]
    #[template(
        ext = "html",
        source = r#"{% import "partials/form.html" as form %}
{% call form::csrf(token) %}{% endcall %}
{% call form::field(errors, "email", "Email", input_type="email", value=typed, maxlength=254) %}{% endcall %}
{% call form::field(errors, "password", "Password", input_type="password", value=typed, hint="At least 8.") %}{% endcall %}"#
    )]
    struct Sample<'a> {
        token: &'a str,
        typed: &'a str,
        errors: FormErrors,
    }

    #[test]
    fn the_partials_render_the_token_fields_their_errors_and_never_a_password() {
        let page = Sample {
            token: "tok",
            typed: "<a@b>",
            errors: FormErrors::new().with("email", "Not an address."),
        }
        .render()
        .unwrap();
        assert!(
            page.contains(r#"<input type="hidden" name="csrf_token" value="tok">"#),
            "{page}"
        );
        assert!(page.contains(r#"name="email" type="email""#), "{page}");
        assert!(
            page.contains(r#"value="&#60;a@b&#62;""#),
            "typed input kept, escaped: {page}"
        );
        assert!(
            page.contains(r#"aria-describedby="email-error" aria-invalid="true""#),
            "{page}"
        );
        assert!(
            page.contains(r#"<p class="field-error" id="email-error">Not an address.</p>"#),
            "{page}"
        );
        assert_eq!(
            page.matches("value=").count(),
            2,
            "no value on the password field: {page}"
        );
        assert!(page.contains(r#"aria-describedby="password-hint">"#), "{page}");
        assert!(!page.contains("password-error"), "{page}");
    }
}
