"""Adding members by e-mail, for tenant admins, without revealing who else uses the installation.

A tenant admin types an e-mail address and a role. If a login has that address it becomes a member; if none
has, an inactive login is created for it. Either way the admin gets the same answer and a one-time link to hand
over (and, when EMAIL_URL is configured, the link is also e-mailed to the address): for a new login the link
sets its password and activates it; for an existing login it only says to sign in with it. The two kinds of
link look alike, so the answer never tells the admin whether the address already had a login.

The set-password link is Django's password-reset token (HMAC over the user's password hash, last login and
e-mail, valid PASSWORD_RESET_TIMEOUT): it stops working once the password is set, so it is used once.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import SetPasswordForm
from django.contrib.auth.tokens import PasswordResetTokenGenerator
from django.core.mail import send_mail
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.encoding import force_bytes, force_str
from django.utils.http import urlsafe_base64_decode, urlsafe_base64_encode
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters

from integrations.models import Tenant, TenantMembership
from integrations.providers.base import public_base_url

logger = logging.getLogger("callbridge.invitations")
User = get_user_model()


class _NewLoginTokens(PasswordResetTokenGenerator):
    key_salt = "callbridge.invitation.new-login"


class _ExistingLoginTokens(PasswordResetTokenGenerator):
    key_salt = "callbridge.invitation.existing-login"


new_login_tokens = _NewLoginTokens()
existing_login_tokens = _ExistingLoginTokens()


def is_pending(user: Any) -> bool:
    """A login created by an invitation whose password was never set."""
    return not user.is_active and not user.has_usable_password()


def _username_for(email: str) -> str:
    base = re.sub(r"[^\w.@+-]", "", email.lower())[:140] or "member"
    name, n = base, 1
    while User.objects.filter(username__iexact=name).exists():
        n += 1
        name = f"{base[:140]}-{n}"
    return name


def user_for_email(email: str) -> Any:
    """The login with exactly this address (case-insensitively), or a new inactive one without a password."""
    user = User.objects.filter(email__iexact=email).order_by("-is_active", "pk").first()
    if user is None:
        user = User(username=_username_for(email), email=email, is_active=False, is_staff=True)
        user.set_unusable_password()
        user.save()
        logger.info("invitation: inactive login %s created", user.pk)
    return user


def invitation_link(user: Any) -> str:
    tokens = new_login_tokens if is_pending(user) else existing_login_tokens
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    path = reverse("invitation", args=[uid, tokens.make_token(user)])
    return f"{public_base_url()}{path}"


def announce(request: HttpRequest, tenant: Tenant, email: str, link: str) -> str:
    """The one answer an admin gets after adding a member by e-mail, whoever the address belonged to."""
    message = (
        f"{email} is now a member of {tenant}. Hand over this one-time link: it sets the password of a new "
        f"login, or tells an existing one to sign in: {link}"
    )
    if getattr(settings, "EMAIL_URL_CONFIGURED", False):
        try:
            send_mail(
                f"Callbridge: you were added to {tenant}",
                f"You were added to {tenant} in Callbridge. Open this link to start: {link}",
                None,
                [email],
            )
            message += " (also sent by e-mail)"
        except Exception as exc:  # a mail server outage must not lose the membership
            logger.warning("invitation e-mail to a member of %s failed: %s", tenant.slug, exc)
    return message


class EmailMembershipForm(forms.ModelForm):
    """What a tenant admin (not a superuser) fills in: the exact e-mail address and the role."""

    email = forms.EmailField(
        label=_("E-mail address"), required=False, help_text=_("The member's exact address.")
    )

    class Meta:
        model = TenantMembership
        fields = ["role"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.invitation: tuple[str, str] | None = None  # (email, link) once saved
        if self.instance.pk:
            self.fields["email"].disabled = True

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.instance.pk:
            return cleaned
        email = (cleaned.get("email") or "").strip()
        if not email:
            self.add_error("email", _("The new member's e-mail address is required."))
            return cleaned
        tenant = cleaned.get("tenant") or (self.instance.tenant if self.instance.tenant_id else None)
        # Only about members of this tenant, whom the admin already sees in the list.
        if (
            tenant is not None
            and TenantMembership.objects.filter(tenant=tenant, user__email__iexact=email).exists()
        ):
            self.add_error("email", _("Someone with this address is already a member of this tenant."))
        return cleaned

    @property
    def member_key(self) -> str:
        email = (
            (self.cleaned_data.get("email") or "").strip().lower() if hasattr(self, "cleaned_data") else ""
        )
        return f"email:{email}" if email else ""

    def save(self, commit: bool = True) -> TenantMembership:
        if not self.instance.pk and not self.instance.user_id:
            email = self.cleaned_data["email"].strip()
            self.instance.user = user_for_email(email)
            self.invitation = (email, invitation_link(self.instance.user))
        return super().save(commit)


class _AcceptForm(SetPasswordForm):
    pass


@never_cache
@sensitive_post_parameters()
def invitation(request: HttpRequest, uidb64: str, token: str) -> HttpResponse:
    """The link an admin handed over: set the password of a new login, or point an existing one to sign in."""
    try:
        user = User.objects.get(pk=int(force_str(urlsafe_base64_decode(uidb64))))
    except (ValueError, TypeError, OverflowError, User.DoesNotExist):
        user = None
    if user is not None and is_pending(user) and new_login_tokens.check_token(user, token):
        form = _AcceptForm(user, request.POST or None)
        if request.method == "POST" and form.is_valid():
            user = form.save(commit=False)
            user.is_active = True
            user.save()
            logger.info("invitation: login %s activated", user.pk)
            return redirect("admin:login")
        return TemplateResponse(request, "invitations/set_password.html", {"form": form, "user": user})
    if user is not None and not is_pending(user) and existing_login_tokens.check_token(user, token):
        return TemplateResponse(request, "invitations/sign_in.html", {"user": user})
    return TemplateResponse(request, "invitations/invalid.html", status=404)
