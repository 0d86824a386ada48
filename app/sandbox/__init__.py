"""``ctmm-bridge sandbox``: the bridge with fake CleverTap and Mailmodo APIs on loopback, so a
newcomer can watch a full round trip (and retries) without an account anywhere."""
