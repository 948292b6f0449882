"""`python -m metadata_service`: settings from the environment and `.env`,
then the service until Ctrl-C / SIGTERM."""

from __future__ import annotations

import logging
import sys

from pydantic import ValidationError

from askmojo.common import auth, tls, tracing
from askmojo.common.logs import configure_logging
from askmojo.common.settings import invalid_settings_message
from metadata_service.config import MetadataSettings
from metadata_service.server import run


def main() -> int:
    try:
        settings = MetadataSettings()
    except ValidationError as exc:
        print(invalid_settings_message("metadata_service", exc), file=sys.stderr)
        return 2
    refusal = (
        auth.startup_refusal(settings)
        or tls.startup_refusal(settings)
        or tls.client_refusal(
            settings.vector_service_ca_file,
            settings.vector_service_client_cert_file,
            settings.vector_service_client_key_file,
            names=(
                "VECTOR_SERVICE_CA_FILE",
                "VECTOR_SERVICE_CLIENT_CERT_FILE",
                "VECTOR_SERVICE_CLIENT_KEY_FILE",
            ),
        )
    )
    if refusal is not None:
        print(f"metadata_service: {refusal}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.effective_log_format)
    tracing.configure("askmojo-metadata")
    logging.getLogger(__name__).info(
        "starting metadata service",
        extra={"environment": settings.environment.value, "workers": settings.worker_count},
    )
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
