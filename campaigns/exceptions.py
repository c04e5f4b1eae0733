class CampaignConflict(Exception):
    """The campaign's current state does not allow the operation (HTTP 409 at the API)."""
