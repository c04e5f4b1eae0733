from django.contrib.admin.apps import AdminConfig


class SalvoAdminConfig(AdminConfig):
    """Django's admin with Salvo's site (config.admin_site) as the default `admin.site`."""

    default_site = "config.admin_site.SalvoAdminSite"
