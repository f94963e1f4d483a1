"""The Lua scripts greenroom runs in Redis, one file each; ``frontend.scripts`` loads them."""
