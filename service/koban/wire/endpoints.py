"""Koban's methods (verb and path under the base URL) and its key headers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One Koban method: a metrics name, the HTTP verb and the path under the base URL."""

    name: str
    verb: Literal["GET", "POST"]
    path: str

    @property
    def is_write(self) -> bool:
        return self.verb != "GET"


GET_LOT_STATUS = Endpoint("GetLotStatus", "GET", "/ncOption/GetLotStatus")
OPTION_ADD = Endpoint("Add", "POST", "/ncOption/Add")
OPTION_PROLONG = Endpoint("Prolong", "POST", "/ncOption/Prolong")
OPTION_UNDO = Endpoint("Undo", "POST", "/ncOption/Undo")
PRERESV_ADD = Endpoint("PreresvAdd", "POST", "/ncPreresv/Add")
PRERESV_DESIST = Endpoint("PreresvDesist", "POST", "/ncPreresv/Desist")
DEAL_GET_UPDATED = Endpoint("GetUpdated", "GET", "/ncDeal/GetUpdated")
DEAL_GET_UPDATED_PROCESS = Endpoint("GetUpdatedProcess", "GET", "/ncDeal/GetUpdatedProcess")
DEAL_PROCESS_GET_ALL = Endpoint("DealProcessGetAll", "GET", "/ncDealProcess/GetAll")
THIRD_POST_ONE = Endpoint("ThirdPostOne", "POST", "/ncThird/PostOne")
# Not in Koban's documentation: a guess (docs/koban-wire.md), used only to name a prospect
# CheckDenonc says exists.
THIRD_GET_ONE_BY_KEY = Endpoint("ThirdGetOneByKey", "GET", "/ncThird/GetOneByKey")

HEADER_API_KEY = "X-ncApi"
HEADER_USER_KEY = "X-ncUser"
