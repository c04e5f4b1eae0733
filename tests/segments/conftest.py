import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient


@pytest.fixture
def admin_user_(db):
    return get_user_model().objects.create_superuser("boss", "boss@example.com", "pw-boss-123")


@pytest.fixture
def api(admin_user_):
    client = APIClient()
    client.force_authenticate(admin_user_)
    return client


@pytest.fixture
def admin_client_(client, admin_user_):
    client.force_login(admin_user_)
    return client
