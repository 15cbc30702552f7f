from st.cli import main

main()
