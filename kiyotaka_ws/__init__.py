"""kiyotaka_ws: a synchronous, threaded client for the Kiyotaka real-time market-data WebSocket API."""

from ._version import __version__
from .channels import Channel, Side
from .client import KiyotakaClient, Subscription
from .errors import (
                     AuthenticationError,
                     ClientStoppedError,
                     ConfigurationError,
                     ConnectionFailedError,
                     DecodeError,
                     EventsDropped,
                     HandlerError,
                     KiyotakaError,
                     RateLimited,
                     ServerError,
                     SubscriptionError,
)
from .events import (
                     BookLevel,
                     BookSnapshot,
                     FundingRate,
                     Liquidation,
                     OpenInterest,
                     Trade,
                     TradeAggregation,
                     VolumeLevel,
                     VolumeProfile,
)
from .status import ConnectionStats, ConnectionStatus, Percentiles, State
from .streams import EventStream

__all__ = [
                     "AuthenticationError",
                     "BookLevel",
                     "BookSnapshot",
                     "Channel",
                     "ClientStoppedError",
                     "ConfigurationError",
                     "ConnectionFailedError",
                     "ConnectionStats",
                     "ConnectionStatus",
                     "DecodeError",
                     "EventStream",
                     "EventsDropped",
                     "FundingRate",
                     "HandlerError",
                     "KiyotakaClient",
                     "KiyotakaError",
                     "Liquidation",
                     "OpenInterest",
                     "Percentiles",
                     "RateLimited",
                     "ServerError",
                     "Side",
                     "State",
                     "Subscription",
                     "SubscriptionError",
                     "Trade",
                     "TradeAggregation",
                     "VolumeLevel",
                     "VolumeProfile",
                     "__version__",
]
